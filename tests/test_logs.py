"""Log set-up: JSON lines that never fail, and redaction of secrets wherever they appear."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path

import pytest

from tests.support import Cli, sim_env, write_ids
from worker.runtime import logs
from worker.runtime.logs import _json_line
from worker.runtime.redaction import REDACTED, Redactor
from worker.simulator import RunningSimulator


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


async def test_a_console_shows_nothing_per_order_and_the_log_file_has_them_all(
    cli: Cli, sim: RunningSimulator, tmp_path: Path
) -> None:
    """On a console (a person's screen) a run prints no line per order, rejected ones included,
    nor the pending orders of a stop: the progress display, the problems and the summary; with
    --log-file every order's event is in the file as JSON."""
    ledger = tmp_path / "l.sqlite"
    orders = [f"CDE{n:010d}" for n in range(1, 21)] + ["SUB0000000001"]
    src = write_ids(tmp_path / "o.csv", orders)
    env = sim_env(sim, ledger, MOUVONE_LOG_FORMAT="console")
    log_file = tmp_path / "run.jsonl"
    done = await cli.run("run", str(src), "--yes", "--log-file", str(log_file), env=env)
    assert done.code == 1, done.stderr[-2000:]
    assert "order_id=" not in done.stderr
    assert "run_started" in done.stderr
    assert done.stderr.rstrip().splitlines()[-1].startswith("cancel-orders: ")
    logged = [json.loads(line) for line in log_file.read_text().splitlines()]
    assert sorted(e["order_id"] for e in logged if e["event"] == "order") == sorted(orders)


async def test_the_ending_line_is_the_summarys_and_the_run_records(
    cli: Cli, sim: RunningSimulator, tmp_path: Path
) -> None:
    """The last line of standard error, `cancel-orders: <ending>`, is the JSON summary's
    `ending` and the run record's, for a run that ends 0 (`done`), 1 and 4."""
    ledger = tmp_path / "l.sqlite"
    env = sim_env(sim, ledger, MOUVONE_LOG_FORMAT="json")
    runs = {
        0: write_ids(tmp_path / "ok.csv", ["CDE0000000001"]),
        1: write_ids(tmp_path / "bad.csv", ["SUB0000000001"]),
        4: write_ids(tmp_path / "late.csv", ["CDE0000000002"]),
    }
    endings = []
    for code, src in runs.items():
        extra = ["--until", "2000-01-01T00:00:00Z"] if code == 4 else []
        done = await cli.run("run", str(src), "--yes", *extra, env=env)
        assert done.code == code, done.stderr[-2000:]
        last = done.stderr.rstrip().splitlines()[-1]
        events = [json.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]
        (summary,) = [e for e in events if e["event"] == "run_summary"]
        assert last == f"cancel-orders: {summary['ending']}"
        endings.append(summary["ending"])
    assert endings[0] == "done"
    assert last.endswith("resume with the same command")
    listed = json.loads((await cli.run("runs", "--format", "json", env=env)).stdout)
    assert [run["ending"] for run in listed] == endings[::-1]  # newest first
