"""The settings model: the fields' checks across settings, the sources in precedence order, and
what commands ask of the settings (a target, credentials, labels)."""

from __future__ import annotations

import codecs
import re
from contextvars import ContextVar
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pydantic import PrivateAttr, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, TomlConfigSettingsSource

from worker.domain.credentials import REDACTED, host_only, url_secrets
from worker.domain.defaults import defaults_file
from worker.domain.errors import ConfigError
from worker.domain.location import PostgresUrl
from worker.domain.models import ORDER_STATUSES
from worker.settings.fields import (
    DEFAULT_NAMESPACE,
    ENV_PREFIX,
    INTEGRATION_BASE_URL,
    SettingsFields,
)
from worker.settings.sources import PrefixedDotEnv
from worker.settings.values import (
    _checked_url,
    _env_proxies,
    deadline_after,
    duration_s,
    is_loopback,
    safe_url,
)

config_file_var: ContextVar[Path | None] = ContextVar("config_file", default=None)
use_environment_var: ContextVar[bool] = ContextVar("use_environment", default=True)
dotenv_file_var: ContextVar[Path | None] = ContextVar("dotenv_file", default=None)
MIN_WEBHOOK_PATH = 8  # a shorter path is redacted only as a part of its whole URL


class Settings(SettingsFields):
    """Every setting, checked; built once at the edge, frozen, passed down."""

    _until_at: datetime | None = PrivateAttr(default=None)  # --until, fixed at the start

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
    def _rate_ceiling(self) -> Settings:
        if self.max_rate is not None and self.max_rate < self.rate:
            raise ValueError(
                f"--max-rate {self.max_rate:g} is below --rate {self.rate:g}: the ceiling of "
                "`control rate` is at least the rate a run starts with"
            )
        return self

    @property
    def rate_ceiling(self) -> float:
        """The highest rate `control rate` may set (--max-rate, else --rate)."""
        return self.max_rate if self.max_rate is not None else self.rate

    @model_validator(mode="after")
    def _secret_files(self) -> Settings:
        """A secret given as a file (a Kubernetes or systemd credential, a file readable only by
        its owner): read when the secret itself is not given."""
        for key, file_key in (
            ("client_secret", "client_secret_file"),
            ("api_key", "api_key_file"),
            ("plan_key", "plan_key_file"),
        ):
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

    @model_validator(mode="after")
    def _until_fixed(self) -> Settings:
        """--until as a moment, fixed when the settings are built (the command starts): a
        prompt or a long scan that crosses HH:MM must not move it to tomorrow."""
        if self.until is not None:
            self._until_at = deadline_after(self.until, datetime.now().astimezone())
        return self

    @field_validator("require_status")
    @classmethod
    def _statuses(cls, value: str | None) -> str | None:
        """Known statuses, without regard to case: a misspelt one would skip every order (and
        `skipped` is final), so it is refused before anything is sent."""
        if value is None:
            return None
        given = [s.strip() for s in value.split(",") if s.strip()]
        if not given:
            raise ValueError("name at least one status, e.g. Draft or Draft,Valid")
        known = {s.lower(): s for s in ORDER_STATUSES}
        unknown = [s for s in given if s.lower() not in known]
        if unknown:
            raise ValueError(
                f"unknown status {', '.join(unknown)}: the API's are {', '.join(ORDER_STATUSES)}"
            )
        return ",".join(known[s.lower()] for s in given)

    @field_validator("notify_url")
    @classmethod
    def _notify_urls(cls, value: str | None) -> str | None:
        for url in (u.strip() for u in (value or "").split(",")):
            parts = urlsplit(url)
            if url and not (
                parts.scheme == "https"
                or (parts.scheme == "http" and is_loopback(parts.hostname or ""))
            ):
                raise ValueError(
                    f"{safe_url(url)}: a notification goes over https (or http to a loopback "
                    "host only)"
                )
        return value

    @property
    def notify_urls(self) -> list[str]:
        """--notify-url, every URL given."""
        return [u.strip() for u in (self.notify_url or "").split(",") if u.strip()]

    @property
    def required_statuses(self) -> frozenset[str] | None:
        """--require-status as a set of the API's status names in lower case, for a match
        without regard to case (None: no precondition)."""
        if self.require_status is None:
            return None
        return frozenset(self.require_status.lower().split(","))

    @property
    def signing_key(self) -> str | None:
        """The plan key's text (plan signs with it, apply requires it), if one is set."""
        return self.plan_key.get_secret_value() if self.plan_key else None

    def deadline_in_s(self, now: datetime) -> float | None:
        """Seconds from ``now`` to the earliest of --until (the moment fixed when the command
        started: negative once it has passed) and --run-time (None: no deadline)."""
        found = []
        if self.run_time is not None:
            found.append(duration_s(self.run_time))
        if self._until_at is not None:
            found.append((self._until_at - now).total_seconds())
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
        if use_environment_var.get():
            sources += [env_settings, PrefixedDotEnv(settings_cls, dotenv_file_var.get())]
        user_file = config_file_var.get()
        if user_file is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=user_file))
        defaults = defaults_file("defaults.toml")
        sources.append(TomlConfigSettingsSource(settings_cls, toml_file=defaults))
        return tuple(sources)

    def secrets(self) -> dict[str, str]:
        """Every secret value -> what is shown in its place, for redaction: the credentials and
        the plan key; the credentials inside every URL setting (userinfo, ``?password=``...),
        the proxies of the environment included; each webhook URL, shown as its host."""
        shown: dict[str, str] = {}
        for value in (self.client_secret, self.access_token, self.api_key, self.plan_key):
            if value is not None and value.get_secret_value():
                shown[value.get_secret_value()] = REDACTED
        urls = [self.redis_url, self.proxy, self.pushgateway, self.base_url, self.token_url]
        if isinstance(self.ledger, PostgresUrl):
            urls.append(self.ledger.dsn)
        for url in (*urls, *_env_proxies()):
            for secret in url_secrets(url) if url else ():
                shown.setdefault(secret, REDACTED)
        for url in self.notify_urls:  # a webhook's path is its secret
            shown[url] = host_only(url)
            path = urlsplit(url).path
            if len(path) >= MIN_WEBHOOK_PATH:
                shown.setdefault(path, "/" + REDACTED)
        return shown

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
