"""structlog set-up: console on a terminal, JSON otherwise, secrets redacted from every event."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import MutableMapping
from typing import Any

import orjson
import structlog

REDACTED = "[REDACTED]"
MIN_SECRET_LEN = 4  # shorter values would redact ordinary words


class Redactor:
    """A processor that replaces every known secret wherever it appears in an event."""

    def __init__(self) -> None:
        self._secrets: tuple[str, ...] = ()

    def add(self, secret: str | None) -> None:
        """Redact this value from now on (tokens are added as they are fetched)."""
        if secret and len(secret) >= MIN_SECRET_LEN and secret not in self._secrets:
            # Longest first, so a secret that contains another is replaced whole.
            self._secrets = tuple(sorted((*self._secrets, secret), key=len, reverse=True))

    def clean(self, value: Any) -> Any:
        """``value`` with every secret replaced, recursing into containers."""
        if isinstance(value, str):
            for secret in self._secrets:
                if secret in value:
                    value = value.replace(secret, REDACTED)
            return value
        if isinstance(value, dict):
            return {k: self.clean(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return type(value)(self.clean(v) for v in value)
        if isinstance(value, BaseException):
            return self.clean(repr(value))
        return value

    def __call__(
        self, _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        """The structlog processor."""
        if self._secrets:
            for key, value in event_dict.items():
                if not isinstance(value, int | float | None):
                    event_dict[key] = self.clean(value)
        return event_dict


redact = Redactor()


class _StderrLogger:
    """Writes each line to the current sys.stderr (a progress bar may have wrapped it)."""

    def msg(self, message: str | bytes) -> None:
        stream = sys.stderr
        binary = getattr(stream, "buffer", None)
        if isinstance(message, bytes):
            if binary is not None:
                stream.flush()
                binary.write(message + b"\n")
                binary.flush()
                return
            message = message.decode("utf-8", "replace")
        stream.write(message + "\n")
        stream.flush()

    log = debug = info = warning = warn = error = critical = exception = fatal = msg


def _stderr_logger(*_args: Any) -> _StderrLogger:
    return _StderrLogger()


def _json_line(event: Any, **_kw: Any) -> bytes:
    """One JSON line; never raises, whatever a caller put in the event."""
    try:
        return orjson.dumps(event, default=str, option=orjson.OPT_NON_STR_KEYS)
    except (TypeError, orjson.JSONEncodeError):
        return json.dumps(event, default=str).encode()


def configure(log_format: str | None, level: str, secrets: list[str] | None = None) -> str:
    """Configure structlog once for the process; returns the format chosen."""
    for secret in secrets or []:
        redact.add(secret)
    fmt = log_format or ("console" if sys.stderr.isatty() else "json")
    renderer: Any
    if fmt == "console":
        renderer = structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    else:
        renderer = structlog.processors.JSONRenderer(serializer=_json_line)
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            redact,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=_stderr_logger,
        cache_logger_on_first_use=True,
    )
    return fmt
