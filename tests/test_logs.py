"""Log set-up: JSON lines that never fail, and redaction of secrets wherever they appear."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from enum import StrEnum

import pytest

from worker.runtime import logs
from worker.runtime.logs import _json_line
from worker.runtime.redaction import REDACTED, Redactor


class _Color(StrEnum):
    RED = "red"


def test_json_line_never_raises() -> None:
    """Enum keys, huge integers and odd objects still give one JSON line."""
    line = _json_line({"event": "x", "counts": {_Color.RED: 1}, "big": 2**80, "obj": object()})
    data = json.loads(line)
    assert data["counts"] == {"red": 1}
    assert data["big"] == 2**80


def test_redactor_cleans_nested_values() -> None:
    """A secret is replaced in strings, containers and exceptions, longest secret first."""
    redact = Redactor()
    redact.add("abc")  # too short to redact safely
    redact.add("token-123")
    redact.add("token-123-long")
    event = {
        "event": "e",
        "msg": "Bearer token-123-long",
        "nested": {"k": ["x token-123"]},
        "exc": ValueError("token-123"),
        "n": 5,
    }
    cleaned = redact(None, "info", event)
    assert cleaned["msg"] == f"Bearer {REDACTED}"
    assert cleaned["nested"] == {"k": [f"x {REDACTED}"]}
    assert "token-123" not in cleaned["exc"]
    assert cleaned["n"] == 5
    assert "abc" not in redact._secrets


def test_info_lines_are_gathered_and_warnings_flush_them(
    capfdbinary: pytest.CaptureFixture[bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Off a terminal, info lines wait for a block; a warning writes them first, then itself."""
    monkeypatch.setattr(logs, "BUFFERED", True)
    logger = logs._StderrLogger()
    logger.info(b'{"n": 1}')
    logger.info(b'{"n": 2}')
    assert capfdbinary.readouterr().err == b""
    logger.warning(b'{"n": 3}')
    assert capfdbinary.readouterr().err == b'{"n": 1}\n{"n": 2}\n{"n": 3}\n'
    logger.info(b'{"n": 4}')
    logger.flush()
    assert capfdbinary.readouterr().err == b'{"n": 4}\n'


def test_timestamp_is_iso_utc() -> None:
    """The timestamp processor writes ISO-8601 UTC with microseconds, close to now."""
    stamped = logs.UtcTimestamp()(None, "info", {})["timestamp"]
    parsed = datetime.strptime(stamped, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    assert abs((datetime.now(UTC) - parsed).total_seconds()) < 5
