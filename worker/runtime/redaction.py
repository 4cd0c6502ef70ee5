"""Secrets never reach a log line or a report: every configured secret is replaced wherever it
appears; control characters are made visible so that no text can steer a terminal."""

from __future__ import annotations

import re
from collections.abc import MutableMapping
from typing import Any

import orjson

from worker.domain.credentials import REDACTED

MIN_SECRET_LEN = 4  # shorter values would redact ordinary words


class Redactor:
    """A processor that replaces every known secret wherever it appears in an event."""

    def __init__(self) -> None:
        self._secrets: dict[str, str] = {}  # secret -> what is shown instead
        self._pattern: re.Pattern[str] | None = None
        self._in_json: tuple[bytes, ...] = ()  # the secrets as they appear in JSON text

    def add(self, secret: str | None, shown: str = REDACTED) -> None:
        """Redact this value from now on (tokens are added as they are fetched); ``shown`` is
        what stands in its place (a webhook URL shows its host)."""
        if secret and len(secret) >= MIN_SECRET_LEN and secret not in self._secrets:
            self._secrets[secret] = shown
            # Longest first, so a secret that contains another is replaced whole.
            ordered = sorted(self._secrets, key=len, reverse=True)
            self._pattern = re.compile("|".join(re.escape(s) for s in ordered))
            self._in_json = tuple(orjson.dumps(s)[1:-1] for s in ordered)

    def in_json(self, line: bytes) -> bool:
        """True when a rendered JSON line holds a secret: a substring test per secret on the
        line, cheaper than a search of every value (a line with one is then redacted)."""
        for needle in self._in_json:  # noqa: SIM110 - not any() of a generator: every log line
            if needle in line:
                return True
        return False

    def _sub(self, match: re.Match[str]) -> str:
        return self._secrets.get(match.group(), REDACTED)

    def text(self, value: str) -> str:
        """``value`` with every secret replaced."""
        pattern = self._pattern
        return pattern.sub(self._sub, value) if pattern and pattern.search(value) else value

    def clean(self, value: Any) -> Any:
        """``value`` with every secret replaced, recursing into containers (keys too)."""
        pattern = self._pattern
        if pattern is None:
            return value
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, dict):
            return {self.clean(k): self.clean(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return type(value)(self.clean(v) for v in value)
        if isinstance(value, BaseException):
            return self.clean(repr(value))
        return value

    def __call__(
        self, _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        """The structlog processor (on the path of every event, so kept lean)."""
        pattern = self._pattern
        if pattern is not None:
            for key, value in event_dict.items():
                kind = type(value)
                if kind is str:
                    if pattern.search(value):
                        event_dict[key] = pattern.sub(self._sub, value)
                elif kind not in _PLAIN:
                    event_dict[key] = self.clean(value)
        return event_dict


_PLAIN = frozenset({int, float, bool, type(None)})
redact = Redactor()

_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")  # C0, DEL and C1: they steer a terminal


def printable(value: str) -> str:
    """``value`` with every control character shown as ``\\xNN``: a hostile ID or message can
    neither retitle the terminal nor forge a line."""
    return (
        _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", value)
        if _CONTROL.search(value)
        else value
    )


def escape_controls(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """The console processor for ``printable`` (a traceback keeps its lines)."""
    for key, value in event_dict.items():
        if isinstance(value, str) and key != "exception":
            event_dict[key] = printable(value)
    return event_dict
