"""The settings' fields: type, constraints, and for the command line a group, a metavar and a
help text (the description). Defaults live in config/defaults.toml."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from worker.domain.location import PostgresUrl

ENV_PREFIX = "MOUVONE_"
INTEGRATION_BASE_URL = "https://soget-api-integration.azure-api.net/customer-orders/v1"
DEFAULT_NAMESPACE = "cancel-orders"

# The units of the settings, in their types: a duration is in seconds, a rate in requests a
# second (every field and parameter of the code that carries one is named with ``_s`` or
# ``_per_s``, or typed so).
Seconds = float
PerSecond = float


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


class SettingsFields(BaseSettings):
    """Every setting of the contract; field names are the TOML keys and, upper-cased, the env
    (the checks and the sources are in ``worker.settings.model``)."""

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
    plan_key: SecretStr | None = _f(
        "plan",
        "KEY",
        "HMAC key that signs plans (plan) and is required of them (apply); better given in the "
        "environment or as a file",
    )
    plan_key_file: Path | None = _f("plan", "FILE", "read the plan key from FILE")
    core_dumps: bool = _f(
        "auth", "", "allow core dumps of this process (they hold the secrets)", default=False
    )
    ledger: PostgresUrl | Path = _f(
        "ledger",
        "PATH|URL",
        "ledger: a SQLite file, or postgresql://USER@HOST/DB shared by several runs",
        default=...,
        union_mode="left_to_right",
    )
    rate: PerSecond = _f(
        "rate", "R", "requests per second, all requests together", gt=0, default=...
    )
    max_rate: PerSecond | None = _f(
        "rate",
        "R",
        "the highest rate `control rate` may set for this run (unset: --rate)",
        gt=0,
        allow_inf_nan=False,
    )
    concurrency: int = _f("rate", "C", "requests in flight at most", ge=1, le=1024, default=...)
    max_attempts: int = _f(
        "retry", "N", "attempts per order, the first included", ge=1, le=100, default=...
    )
    timeout: Seconds = _f("network", "S", "seconds per request", gt=0, default=...)
    max_wait: Seconds = _f(
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
    backoff_base: Seconds = _f("retry", "S", "first retry delay ceiling", gt=0, default=...)
    backoff_cap: Seconds = _f("retry", "S", "longest retry delay", gt=0, default=...)
    grace: Seconds = _f(
        "stops", "S", "seconds in-flight requests get after a signal", ge=0, default=...
    )
    progress_interval: Seconds = _f(
        "progress", "S", "seconds between progress events off a terminal", gt=0, default=...
    )
    outcome_table: Path | None = _f("retry", "FILE", "outcome table replacing the shipped one")
    outage_timeout: Seconds = _f(
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
    require_status: str | None = _f(
        "preconditions",
        "S[,S...]",
        "look each order up (GET) right before its DELETE and send it only in one of these "
        "statuses, e.g. Draft,Valid; otherwise it is recorded skipped",
    )
    canary: int = _f(
        "canary",
        "N",
        "send the first N orders before any other; go on only if every one ended cancelled or "
        "already_cancelled (else exit 4)",
        0,
        ge=0,
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
    claim_idle: Seconds = _f(
        "lease",
        "S",
        "seconds without a renewal before a run's lease on a shared (PostgreSQL) ledger lapses, "
        "its term written for the other runs; and before a dead consumer's entries are claimed",
        gt=0,
        default=...,
    )
    max_deliveries: int = _f(
        "queue", "N", "deliveries before an entry is dead-lettered", ge=1, default=...
    )
    metrics_textfile: Path | None = _f(
        "export", "PATH", "write Prometheus metrics there at the end (node-exporter textfile)"
    )
    pushgateway: str | None = _f("export", "URL", "push Prometheus metrics there at the end")
    job: str | None = _f(
        "job",
        "NAME",
        "the job's name: a label on every metric and the Pushgateway's grouping key (default: "
        "the command and the input, or the queue namespace)",
        pattern=r"^[A-Za-z0-9_.:-]{1,100}$",
    )
    metrics_port: int | None = _f(
        "serve", "PORT", "consume: serve /metrics and /healthz", ge=0, le=65535
    )
    metrics_host: str = _f("serve", "HOST", "consume: the metrics address", "127.0.0.1")
    log_file: Path | None = _f(
        "logs", "PATH", "write the JSON events there too; on a terminal, the per-order ones only"
    )
    operator: str | None = _f("audit", "NAME", "who runs this, recorded with the run (the OS user)")
    reason: str | None = _f("audit", "TEXT", "why, recorded with the run and in the notification")
    ticket: str | None = _f("audit", "ID", "the change or incident ticket, recorded with the run")
    notify_url: str | None = _f(
        "audit",
        "URL",
        "POST the run's outcome there when it ends (Slack, Teams or any JSON webhook; repeat "
        "the flag, or separate URLs with commas): https, or http to a loopback host",
    )
    on_finish: str | None = _f(
        "audit", "CMD", "run CMD when the run ends, the notification's JSON on its stdin"
    )
