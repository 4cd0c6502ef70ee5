"""Settings: built once at the edge, frozen, passed down. No other module reads the environment.

Precedence, highest first: command-line flags, the environment (``MOUVONE_*``), a ``.env`` file,
the ``--config`` TOML file, then the defaults shipped in ``config/defaults.toml``.
"""

from __future__ import annotations

import codecs
import ipaddress
import os
import re
import stat
import tomllib
from contextlib import suppress
from contextvars import ContextVar
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from dotenv import dotenv_values
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from worker.domain.defaults import defaults_file
from worker.domain.errors import ConfigError

ENV_PREFIX = "MOUVONE_"
_config_file: ContextVar[Path | None] = ContextVar("config_file", default=None)
_use_environment: ContextVar[bool] = ContextVar("use_environment", default=True)
_dotenv_file: ContextVar[Path | None] = ContextVar("dotenv_file", default=None)


INTEGRATION_BASE_URL = "https://soget-api-integration.azure-api.net/customer-orders/v1"
DEFAULT_NAMESPACE = "cancel-orders"


def _f(group: str, metavar: str, help_text: str, default: Any = None, **kwargs: Any) -> Any:
    """A setting's field: its group and metavar for the command line, its help text as the
    description. Unset is None; ``...`` marks a setting whose value config/defaults.toml
    always gives (the one place of each default)."""
    extra: dict[str, Any] = {"group": group, "metavar": metavar}
    return Field(default, description=help_text, json_schema_extra=extra, **kwargs)


class TargetSpec(BaseModel):
    """A named target of the config file: ``[targets.NAME]``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    base_url: str
    token_url: str | None = None


class Settings(BaseSettings):
    """Every setting of the contract; field names are the TOML keys and, upper-cased, the env."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, frozen=True, extra="forbid")

    # Each field's group, help (its description) and metavar make its --flag (worker.cli.flags);
    # its default lives in config/defaults.toml alone. No default target: a command that talks
    # to the API is told where, never guesses.
    base_url: str | None = _f("target", "URL", "API base URL")
    token_url: str | None = _f("target", "URL", "OAuth2 token endpoint")
    target: str | None = _f(
        "target", "NAME", "the [targets.NAME] table of the --config file: base and token URLs"
    )
    targets: dict[str, TargetSpec] = Field(default_factory=dict)  # the config file's tables
    client_id: str | None = _f("auth", "ID", "OAuth2 client id")
    client_secret: SecretStr | None = _f(
        "auth", "SECRET", "OAuth2 client secret, better given in the environment"
    )
    client_secret_file: Path | None = _f("auth", "FILE", "read the client secret from FILE")
    access_token: SecretStr | None = _f(
        "auth", "TOKEN", "ready bearer token, no refresh; better given in the environment"
    )
    api_key: SecretStr | None = _f(
        "auth", "KEY", "subscription key, better given in the environment"
    )
    api_key_file: Path | None = _f("auth", "FILE", "read the subscription key from FILE")
    core_dumps: bool = _f(
        "auth", "", "allow core dumps of this process (they hold the secrets)", default=False
    )
    ledger: Path = _f("ledger", "PATH", "ledger path", default=...)
    rate: float = _f("rate", "R", "requests per second, all requests together", gt=0, default=...)
    concurrency: int = _f("rate", "C", "requests in flight at most", ge=1, le=1024, default=...)
    max_attempts: int = _f(
        "retry", "N", "attempts per order, the first included", ge=1, le=100, default=...
    )
    timeout: float = _f("network", "S", "seconds per request", gt=0, default=...)
    max_wait: float = _f(
        "retry", "S", "longest Retry-After pause before stopping", ge=0, default=...
    )
    id_pattern: str = _f("input", "REGEX", "valid order ID", default=...)
    encoding: str = _f(
        "input", "NAME", "the input's encoding, e.g. cp1252 for a spreadsheet export", "utf-8"
    )
    log_format: Literal["json", "console"] | None = _f(
        "logs", "json|console", "log format (console on a terminal, else json)"
    )
    log_level: Literal["debug", "info", "warning", "error"] = _f(
        "logs", "LEVEL", "debug, info, warning, error", default=...
    )
    backoff_base: float = _f("retry", "S", "first retry delay ceiling", gt=0, default=...)
    backoff_cap: float = _f("retry", "S", "longest retry delay", gt=0, default=...)
    grace: float = _f(
        "stops", "S", "seconds in-flight requests get after a signal", ge=0, default=...
    )
    progress_interval: float = _f(
        "progress", "S", "seconds between progress events off a terminal", gt=0, default=...
    )
    outcome_table: Path | None = _f("retry", "FILE", "outcome table replacing the shipped one")
    outage_timeout: float = _f(
        "retry",
        "S",
        "longest API outage before the run stops, orders left pending",
        gt=0,
        default=...,
    )
    max_failure_rate: float | None = _f(
        "failures",
        "PCT",
        "stop (exit 3) once more than PCT%% of finished orders failed",
        ge=0,
        le=100,
    )
    min_orders: int = _f(
        "failures", "N", "finished orders before --max-failure-rate", ge=1, default=...
    )
    max_orders: int | None = _f(
        "cap", "N", "refuse (exit 2, nothing sent) to send more than N orders", ge=0
    )
    until: str | None = _f(
        "stops", "TIME", "start no order after this time (HH:MM local, or ISO-8601); exit 4"
    )
    run_time: str | None = _f(
        "stops", "DURATION", "the same, as a duration from the start: 90s, 45m, 2h"
    )
    stop_file: Path | None = _f(
        "stops", "PATH", "stop as at a deadline once this file exists, checked every second"
    )
    allow_insecure_http: bool = _f(
        "network", "", "allow a plain http:// URL to a host that is not loopback", default=False
    )
    proxy: str | None = _f(
        "network", "URL", "HTTP proxy for every request (else HTTPS_PROXY, HTTP_PROXY, NO_PROXY)"
    )
    ca_bundle: Path | None = _f(
        "network", "FILE", "PEM certificate authorities to trust, e.g. a company CA"
    )
    redis_url: str | None = _f("queue", "URL", "Redis for queue mode")
    namespace: str | None = _f(
        "queue",
        "NAME",
        f"names everything a group uses: NAME:requests, group NAME, NAME:results, NAME:dead "
        f"(unset: {DEFAULT_NAMESPACE})",
    )
    stream: str | None = _f("queue", "NAME", "requests stream (NAMESPACE:requests)")
    group: str | None = _f("queue", "NAME", "consumer group (derived from the stream's name)")
    consumer: str | None = _f("queue", "NAME", "this consumer's name (unset: the host name)")
    results_stream: str | None = _f(
        "queue", "NAME", "results stream (derived from the stream's name: X:requests -> X:results)"
    )
    dead_letter_stream: str | None = _f(
        "queue", "NAME", "dead-letter stream (derived from the stream's name: X:requests -> X:dead)"
    )
    claim_idle: float = _f(
        "queue", "S", "idle seconds before a dead consumer's entries are claimed", gt=0, default=...
    )
    max_deliveries: int = _f(
        "queue", "N", "deliveries before an entry is dead-lettered", ge=1, default=...
    )
    metrics_textfile: Path | None = _f(
        "export", "PATH", "write Prometheus metrics there at the end (node-exporter textfile)"
    )
    pushgateway: str | None = _f("export", "URL", "push Prometheus metrics there at the end")
    metrics_port: int | None = _f(
        "serve", "PORT", "consume: serve /metrics and /healthz", ge=0, le=65535
    )
    metrics_host: str = _f("serve", "HOST", "consume: the metrics address", "127.0.0.1")

    @field_validator("base_url", "token_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        return _checked_url(value)

    @model_validator(mode="after")
    def _named_target(self) -> Settings:
        """``target = NAME`` fills the base and token URLs from ``[targets.NAME]``, unless they
        are given themselves."""
        if self.target is None:
            return self
        spec = self.targets.get(self.target)
        if spec is None:
            known = ", ".join(sorted(self.targets)) or "none"
            raise ValueError(
                f"no [targets.{self.target}] in the config file (targets there: {known})"
            )
        if self.base_url is None:
            object.__setattr__(self, "base_url", _checked_url(spec.base_url))
        if self.token_url is None and spec.token_url is not None:
            object.__setattr__(self, "token_url", _checked_url(spec.token_url))
        return self

    @model_validator(mode="after")
    def _tls_unless_loopback(self) -> Settings:
        """Credentials never cross a network in clear: http:// only to a loopback host."""
        if self.allow_insecure_http:
            return self
        for key in ("base_url", "token_url"):
            if getattr(self, key) is None:
                continue
            parts = urlsplit(getattr(self, key))
            if parts.scheme == "http" and not is_loopback(parts.hostname or ""):
                raise ValueError(
                    f"{key} {parts.scheme}://{parts.hostname} is plain http to a host that is "
                    "not loopback: use https, or --allow-insecure-http "
                    "(MOUVONE_ALLOW_INSECURE_HTTP)"
                )
        return self

    @model_validator(mode="after")
    def _secret_files(self) -> Settings:
        """A secret given as a file (a Kubernetes or systemd credential, a file readable only by
        its owner): read when the secret itself is not given."""
        for key, file_key in (("client_secret", "client_secret_file"), ("api_key", "api_key_file")):
            path = getattr(self, file_key)
            if path is None or getattr(self, key) is not None:
                continue
            try:
                value = Path(path).read_text(encoding="utf-8").strip()
            except (OSError, UnicodeDecodeError) as exc:
                raise ValueError(f"{path}: cannot read the secret: {exc}") from None
            object.__setattr__(self, key, SecretStr(value))
        return self

    @model_validator(mode="after")
    def _queue_names(self) -> Settings:
        """Queue names not given derive from the namespace, else from the requests stream's
        name (``X:requests`` -> group ``X``, ``X:results``, ``X:dead``), never from the shared
        defaults: two teams sharing a Redis cannot skip each other's orders."""
        if self.namespace is not None:
            base = self.namespace
            stream = self.stream or f"{base}:requests"
        else:
            stream = self.stream or f"{DEFAULT_NAMESPACE}:requests"
            base = stream.removesuffix(":requests")
        for key, value in (
            ("stream", stream),
            ("group", base),
            ("results_stream", f"{base}:results"),
            ("dead_letter_stream", f"{base}:dead"),
        ):
            if getattr(self, key) is None:
                object.__setattr__(self, key, value)
        return self

    @property
    def queue_names(self) -> tuple[str, str, str, str]:
        """(requests stream, group, results stream, dead letters), all derived."""
        names = (self.stream, self.group, self.results_stream, self.dead_letter_stream)
        assert all(n is not None for n in names)
        return names  # type: ignore[return-value]

    @field_validator("ca_bundle")
    @classmethod
    def _readable_bundle(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError(f"{value}: no such file (a PEM file of certificate authorities)")
        return value

    @field_validator("run_time")
    @classmethod
    def _duration(cls, value: str | None) -> str | None:
        if value is not None:
            duration_s(value)
        return value

    @field_validator("until")
    @classmethod
    def _deadline(cls, value: str | None) -> str | None:
        if value is not None:
            deadline_after(value, datetime.now().astimezone())
        return value

    def deadline_in_s(self, now: datetime) -> float | None:
        """Seconds from ``now`` to the earliest of --until and --run-time (None: no deadline)."""
        found = []
        if self.run_time is not None:
            found.append(duration_s(self.run_time))
        if self.until is not None:
            found.append((deadline_after(self.until, now) - now).total_seconds())
        return min(found) if found else None

    @field_validator("encoding")
    @classmethod
    def _known_encoding(cls, value: str) -> str:
        try:
            codecs.lookup(value)
        except LookupError:
            raise ValueError(f"unknown encoding {value!r}") from None
        return value

    @field_validator("id_pattern")
    @classmethod
    def _regex(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"not a regular expression: {exc}") from exc
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,  # noqa: ARG003 - replaced, see below
        file_secret_settings: PydanticBaseSettingsSource,  # noqa: ARG003 - not used
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Flags, environment, .env, the --config file, the shipped defaults."""
        sources: list[PydanticBaseSettingsSource] = [init_settings]
        if _use_environment.get():
            sources += [env_settings, _PrefixedDotEnv(settings_cls, _dotenv_file.get())]
        user_file = _config_file.get()
        if user_file is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=user_file))
        defaults = defaults_file("defaults.toml")
        sources.append(TomlConfigSettingsSource(settings_cls, toml_file=defaults))
        return tuple(sources)

    def secrets(self) -> list[str]:
        """The secret values, for redaction (a Redis URL's password included)."""
        found = [self.client_secret, self.access_token, self.api_key]
        values = [s.get_secret_value() for s in found if s is not None and s.get_secret_value()]
        passwords = [
            urlsplit(url).password for url in (self.redis_url, self.proxy, *_env_proxies()) if url
        ]
        return values + [p for p in passwords if p]

    def require_target(self) -> None:
        """ConfigError unless a target is given: a command that talks to the API never falls
        back on a default gateway."""
        if self.base_url is None:
            raise ConfigError(
                "no target: set MOUVONE_BASE_URL (--base-url) and MOUVONE_TOKEN_URL "
                "(--token-url), or --target NAME for a [targets.NAME] table of the --config "
                f"file (the integration gateway, for one, is {INTEGRATION_BASE_URL})"
            )
        if self.token_url is None and self.access_token is None:
            raise ConfigError(
                "no token endpoint: set MOUVONE_TOKEN_URL (--token-url), or token_url in the "
                "[targets.NAME] table, or MOUVONE_ACCESS_TOKEN"
            )

    @property
    def api_url(self) -> str:
        """The base URL (after require_target)."""
        if self.base_url is None:
            self.require_target()
        assert self.base_url is not None
        return self.base_url

    @property
    def target_label(self) -> str:
        """What people are shown of the target: its name and base URL, or the base URL."""
        url = safe_url(self.api_url)
        return f"{self.target} ({url})" if self.target else url

    @property
    def token_host(self) -> str:
        """The token endpoint's host, for confirmations and summaries."""
        return urlsplit(self.token_url or "").hostname or "(a given access token)"

    def require_credentials(self) -> None:
        """Raise ConfigError naming what is missing, before anything is sent."""
        missing = []
        if self.api_key is None or not self.api_key.get_secret_value():
            missing.append(f"{ENV_PREFIX}API_KEY (--api-key)")
        if self.access_token is None:
            if not self.client_id:
                missing.append(f"{ENV_PREFIX}CLIENT_ID (--client-id)")
            if self.client_secret is None or not self.client_secret.get_secret_value():
                missing.append(f"{ENV_PREFIX}CLIENT_SECRET (--client-secret)")
        if missing:
            alt = f" (or {ENV_PREFIX}ACCESS_TOKEN instead of the client credentials)"
            hint = alt if any("CLIENT" in m for m in missing) else ""
            raise ConfigError("missing credential: " + ", ".join(missing) + hint)


def _env_proxies() -> list[str]:
    return [v for k, v in os.environ.items() if k.lower() in ("https_proxy", "http_proxy") and v]


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h)\s*$")


def duration_s(text: str) -> float:
    """``90s``, ``45m``, ``2h`` in seconds; ValueError otherwise."""
    found = _DURATION.match(text)
    if found is None:
        raise ValueError(f"{text!r} is not a duration: a number and s, m or h (90s, 45m, 2h)")
    return float(found.group(1)) * {"s": 1, "m": 60, "h": 3600}[found.group(2)]


def deadline_after(text: str, now: datetime) -> datetime:
    """``HH:MM`` (local time: the next such time, today or tomorrow) or an ISO-8601 time (a
    time without a zone is local), as an aware datetime; ValueError otherwise."""
    if re.fullmatch(r"\d{1,2}:\d{2}", text.strip()):
        hours, minutes = (int(x) for x in text.strip().split(":"))
        when = now.replace(hour=hours, minute=minutes, second=0, microsecond=0)
        return when if when > now else when + timedelta(days=1)
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"{text!r} is not HH:MM or an ISO-8601 time") from None
    return when if when.tzinfo is not None else when.astimezone()


def _checked_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        raise ValueError("must be an http:// or https:// URL")
    return value.rstrip("/")


def safe_url(url: str) -> str:
    """``url`` without the credentials of its userinfo (``user:***@host``), for printing."""
    parts = urlsplit(url)
    if parts.password is None and "@" not in parts.netloc:
        return url
    host = parts.netloc.rsplit("@", 1)[-1]
    user = parts.username or ""
    return parts._replace(netloc=f"{user}:***@{host}" if user else f"***@{host}").geturl()


def is_loopback(host: str) -> bool:
    """True for localhost and the loopback addresses (127.0.0.0/8, ::1)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


FILES_READ: list[str] = []  # the settings files the last load_settings read


def _check_private(path: Path) -> None:
    """A settings file that someone else could have written is refused: it could send the
    credentials to another host."""
    st = path.stat()
    if st.st_uid != os.getuid() or st.st_mode & 0o022:
        raise ConfigError(
            f"{path}: not read: it belongs to another user or others may write it "
            f"(mode {stat.filemode(st.st_mode)}); make it yours with chmod go-w, or remove it"
        )


class _PrefixedDotEnv(PydanticBaseSettingsSource):
    """The ``MOUVONE_*`` lines of a .env file; its other lines belong to other programs."""

    def __init__(self, settings_cls: type[BaseSettings], path: Path | None) -> None:
        super().__init__(settings_cls)
        self._values: dict[str, Any] = {}
        if path is not None and path.is_file():
            _check_private(path)
            # No interpolation: "${MOUVONE_API_KEY}" in a value stays that text.
            for key, value in dotenv_values(path, interpolate=False).items():
                if key.upper().startswith(ENV_PREFIX) and value is not None:
                    self._values[key[len(ENV_PREFIX) :].lower()] = value
            FILES_READ.append(str(path))

    def get_field_value(
        self,
        field: FieldInfo,  # noqa: ARG002 - the base class's signature
        field_name: str,
    ) -> tuple[Any, str, bool]:
        """Unused: __call__ returns everything at once."""
        return self._values.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        """Settings found in the file, by field name."""
        return dict(self._values)


def load_settings(
    flags: dict[str, Any],
    config_file: Path | None = None,
    env_file: Path | None = Path(".env"),
    *,
    environment: bool = True,
) -> Settings:
    """Build the settings from every source; a bad value is a one-line ConfigError.

    With ``environment=False`` only the flags and files count (the demo must not pick up a
    real credential from the environment).
    """
    if config_file is not None and not config_file.is_file():
        raise ConfigError(f"{config_file}: config file not found")
    given = {key: value for key, value in flags.items() if value is not None}
    FILES_READ.clear()
    if config_file is not None:
        FILES_READ.append(str(config_file))
    token = _config_file.set(config_file)
    env_token = _use_environment.set(environment)
    dotenv_token = _dotenv_file.set(env_file)
    try:
        return Settings(**given)
    except ValidationError as exc:
        raise ConfigError(_one_line(exc, config_file)) from None
    except (OSError, ValueError) as exc:  # unreadable or malformed TOML
        raise ConfigError(f"{config_file}: {exc}") from None
    finally:
        _config_file.reset(token)
        _use_environment.reset(env_token)
        _dotenv_file.reset(dotenv_token)


def given_elsewhere(config_file: Path | None, env_file: Path | None = Path(".env")) -> set[str]:
    """The settings given by the environment, a .env file or the --config file (not by the
    shipped defaults): what a person chose, which a recorded value must not override."""
    given = {name for name in Settings.model_fields if f"{ENV_PREFIX}{name.upper()}" in os.environ}
    if env_file is not None and env_file.is_file():
        given |= {
            key[len(ENV_PREFIX) :].lower()
            for key in dotenv_values(env_file, interpolate=False)
            if key.upper().startswith(ENV_PREFIX)
        }
    if config_file is not None and config_file.is_file():
        with suppress(OSError, ValueError):
            given |= set(tomllib.loads(config_file.read_text(encoding="utf-8")))
    return given


def _one_line(exc: ValidationError, config_file: Path | None) -> str:
    first = exc.errors()[0]
    key = ".".join(str(part) for part in first["loc"])
    message = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        where = f"{config_file} or .env" if config_file else ".env"
        message = f"unknown setting (in {where})"
    extra = f" (and {len(exc.errors()) - 1} more)" if len(exc.errors()) > 1 else ""
    if not key:  # a rule across settings: the message names them
        return f"invalid settings: {message}{extra}"
    return f"invalid setting {key}: {message}{extra}"
