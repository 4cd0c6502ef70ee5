"""The ledger: claims, resume, duplicates, idempotent upserts, no downgrade, the runs, the
attempt log, control, binding to a target (each test of the shared behaviour once, on both
backends); a file's lock and schema (SQLite's own)."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from worker.domain.errors import LedgerError
from worker.domain.location import Location, PostgresUrl
from worker.domain.models import Outcome, Result, RunRecord
from worker.ledger import SCHEMA_VERSION, Ledger, SqliteLedger, ledger_at
from worker.ledger import control as file_control
from worker.ledger.schema import ATTEMPT_COLUMNS

A, B, C = "ABC0000000001", "ABC0000000002", "ABC0000000003"


@pytest.fixture
def ledger(ledger_location: str) -> Iterator[Ledger]:
    """Each backend in turn: a SQLite file, then a PostgreSQL schema of the test's own."""
    where: Location = (
        PostgresUrl(ledger_location) if "://" in ledger_location else Path(ledger_location)
    )
    opened = ledger_at(where)
    yield opened
    opened.close()


@pytest.fixture
def file_ledger(tmp_path: Path) -> Iterator[Ledger]:
    """A SQLite ledger, for what only a file does (its lock, WAL, schema version)."""
    opened = SqliteLedger(tmp_path / "l.sqlite")
    yield opened
    opened.close()


def _row(ledger: Ledger, order_id: str) -> tuple[object, ...]:
    return next(r for r in ledger.rows() if r[0] == order_id)


def test_claim_marks_pending_and_dedupes(ledger: Ledger) -> None:
    """New orders become pending under the run; repeats in the same run are duplicates."""
    plan = ledger.claim([(A, None), (B, None), (A, None)], "run1")
    assert plan.to_send == [A, B]
    assert plan.duplicates == 1
    again = ledger.claim([(B, None), (C, None)], "run1")
    assert again.to_send == [C]
    assert again.duplicates == 1
    assert _row(ledger, A)[1] == "pending"


def test_resume_skips_final_only(ledger: Ledger) -> None:
    """A later run skips final orders and takes pending and retryable_failed ones again."""
    ledger.claim([(A, None), (B, None), (C, None)], "run1")
    ledger.record(
        [
            Result(A, Outcome.CANCELLED, 200, None, None, 1),
            Result(B, Outcome.RETRYABLE_FAILED, 503, "HTTP_503", None, 5),
        ],
        "run1",
    )
    plan = ledger.claim([(A, None), (B, None), (C, None)], "run2")
    assert plan.to_send == [B, C]
    assert plan.skipped == ["cancelled"]


def test_force_takes_final_orders(ledger: Ledger) -> None:
    """--force sends final orders again."""
    ledger.claim([(A, None)], "run1")
    ledger.record([Result(A, Outcome.REJECTED, 400, "R0008", None, 1)], "run1")
    assert ledger.claim([(A, None)], "run2", force=True).to_send == [A]


def test_final_is_never_downgraded_to_pending(ledger: Ledger) -> None:
    """An interrupted resend (pending) does not erase a recorded final outcome."""
    ledger.claim([(A, None)], "run1")
    ledger.record([Result(A, Outcome.CANCELLED, 200, None, None, 1)], "run1")
    ledger.record([Result(A, Outcome.PENDING, None, None, "interrupted", 1)], "run2")
    assert _row(ledger, A)[1] == "cancelled"
    ledger.record(
        [Result(A, Outcome.ALREADY_CANCELLED, 400, "ORDER_ALREADY_CANCELED", None, 1)], "run2"
    )
    assert _row(ledger, A)[1] == "already_cancelled"


def test_record_is_idempotent(ledger: Ledger) -> None:
    """Recording the same result twice leaves one row."""
    result = Result(A, Outcome.CANCELLED, 200, None, None, 1)
    ledger.record([result], "run1")
    ledger.record([result], "run1")
    assert [r[0] for r in ledger.rows()] == [A]


def test_every_field_of_a_result_reads_back_as_written(ledger: Ledger) -> None:
    """What an API answer may carry (quotes, backslashes, line breaks, JSON's own characters,
    characters beyond the BMP, a line separator, an ID that looks like a number) is written and
    read back unchanged, and the numbers stay numbers."""
    message = 'say "no" \\ C:\\path\n{"a": [1, null]} \u2028 \U0001f6a2 ~ 0.5 -- ; DROP'
    odd = [
        Result(A, Outcome.REJECTED, 409, "R0008", message, 3),
        Result("0000000000123", Outcome.INVALID, None, "WRONG_FORMAT", "line 2: not an ID", 0),
        Result(B, Outcome.CANCELLED, 200, None, None, 1),
    ]
    ledger.record(odd, "run1")
    rows = {r[0]: r for r in ledger.rows()}
    for result in odd:
        assert rows[result.order_id][:6] == (
            result.order_id,
            result.outcome.value,
            result.http_status,
            result.error_code,
            result.message,
            result.attempts,
        )


def test_invalid_ids_are_recorded(ledger: Ledger) -> None:
    """Invalid IDs are written with WRONG_FORMAT and never queued."""
    bad = Result("x", Outcome.INVALID, None, "WRONG_FORMAT", "in.csv:2: does not match", 0)
    plan = ledger.claim([("x", bad), (A, None)], "run1")
    assert plan.to_send == [A]
    assert _row(ledger, "x")[1:4] == ("invalid", None, "WRONG_FORMAT")


def test_dry_claim_writes_nothing(ledger: Ledger) -> None:
    """A dry claim dedupes across batches without touching the ledger."""
    ledger.claim([(A, None)], "run1")
    ledger.record([Result(A, Outcome.CANCELLED, 200, None, None, 1)], "run1")
    ledger.close()
    readonly = ledger_at(ledger.path, readonly=True)
    try:
        first = readonly.claim([(A, None), (B, None)], "dry", dry=True)
        second = readonly.claim([(B, None), (C, None)], "dry", dry=True)
    finally:
        readonly.close()
    assert (first.to_send, first.skipped) == ([B], ["cancelled"])
    assert (second.to_send, second.duplicates) == ([C], 1)
    reopened = ledger_at(ledger.path)
    assert [r[0] for r in reopened.rows()] == [A]
    reopened.close()


def test_candidates_for_retry(ledger: Ledger) -> None:
    """retry takes pending and retryable_failed orders, keyset-paged in ID order."""
    ledger.claim([(A, None), (B, None), (C, None)], "run1")
    ledger.record([Result(B, Outcome.CANCELLED, 200, None, None, 1)], "run1")
    wanted = (Outcome.PENDING, Outcome.RETRYABLE_FAILED)
    assert ledger.candidates(wanted, "", 1) == [A]
    assert ledger.candidates(wanted, A, 10) == [C]


def test_one_writer_at_a_time(tmp_path: Path, file_ledger: Ledger) -> None:
    """A second run on the same ledger is refused while the first holds it."""
    with pytest.raises(LedgerError, match="in use by another run"):
        SqliteLedger(tmp_path / "l.sqlite")


def test_wal_and_schema_version(tmp_path: Path, file_ledger: Ledger) -> None:
    """The file is in WAL mode and carries its schema version."""
    db = sqlite3.connect(tmp_path / "l.sqlite")
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    db.close()


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    """A ledger written by a newer version is not touched."""
    path = tmp_path / "new.sqlite"
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.close()
    with pytest.raises(LedgerError, match="newer than this tool"):
        SqliteLedger(path)


def test_file_is_private(tmp_path: Path) -> None:
    """A new ledger is readable by its owner only."""
    path = tmp_path / "p.sqlite"
    SqliteLedger(path).close()
    assert path.stat().st_mode & 0o077 == 0


def test_unwritable_location(tmp_path: Path) -> None:
    """A ledger in a missing folder is a LedgerError naming the path."""
    with pytest.raises(LedgerError, match=r"missing/l\.sqlite: cannot open the ledger"):
        SqliteLedger(tmp_path / "missing" / "l.sqlite")


def test_readonly_needs_a_file(tmp_path: Path) -> None:
    """report and retry on a ledger that does not exist say so."""
    with pytest.raises(LedgerError, match="no ledger at this path"):
        SqliteLedger(tmp_path / "none.sqlite", readonly=True)


def test_counts(ledger: Ledger) -> None:
    """Counts by outcome and error code, optionally for one outcome."""
    ledger.record(
        [
            Result(A, Outcome.REJECTED, 400, "R0008", None, 1),
            Result(B, Outcome.REJECTED, 400, "R0009", None, 1),
            Result(C, Outcome.CANCELLED, 200, None, None, 1),
        ],
        "run1",
    )
    assert ledger.counts() == ({"rejected": 2, "cancelled": 1}, {"R0008": 1, "R0009": 1})
    assert ledger.counts("cancelled") == ({"cancelled": 1}, {})


def test_existing_and_still_mine(ledger: Ledger) -> None:
    """What the ledger holds of some IDs, and which of them a run still holds `pending`."""
    ledger.begin_run("run1", "run", "http://127.0.0.1:1")
    ledger.claim([(A, None), (B, None)], "run1")
    ledger.record([Result(A, Outcome.CANCELLED, 200, None, None, 1)], "run1")
    assert ledger.existing([A, B, C]) == {
        A: ("cancelled", "run1", False),
        B: ("pending", "run1", True),  # pending under a run that never ended: maybe sent
    }
    assert ledger.still_mine([C, B, A], "run1") == [B]
    assert ledger.still_mine([B], "run2") == []


def test_a_run_binds_the_ledger_to_its_target_once_it_may_have_sent(ledger: Ledger) -> None:
    """The first run that may have sent something binds the ledger; a run that ended with no
    request does not."""
    assert ledger.target() is None
    ledger.begin_run("run1", "run", "http://127.0.0.1:1")
    ledger.end_run("run1", 3, {"requests": 0})
    assert ledger.target() is None
    ledger.begin_run("run2", "run", "http://127.0.0.1:2")
    assert ledger.target() == "http://127.0.0.1:2"
    ledger.end_run("run2", 0, {"requests": 5})
    ledger.begin_run("run3", "run", "http://127.0.0.1:3")
    assert ledger.target() == "http://127.0.0.1:2"


def test_runs_and_the_attempt_log(ledger: Ledger) -> None:
    """Runs newest first (an unfinished one counted from its orders and attempts); an order's
    history with its run's who and why; the log by run and by time; pruning by time."""
    who = RunRecord(operator="ops", host="h", reason="bad import", ticket="T-1")
    ledger.begin_run("run1", "run", "http://127.0.0.1:1", who)
    ledger.claim([(A, None), (B, None)], "run1")
    ledger.record(
        [Result(A, Outcome.CANCELLED, 200, None, None, 1)],
        "run1",
        [
            ("run1", A, 1, "DELETE", 1_700_000_000.0, 12.5, 200, None, None, "q1", "r1"),
            ("run1", B, 1, "DELETE", 1_700_000_001.0, 8.0, 503, "HTTP_503", "busy", "q2", None),
        ],
    )
    ledger.end_run("run1", 1, {"requests": 2, "outcomes": {"cancelled": 1, "pending": 1}})
    ledger.begin_run("run2", "retry", "http://127.0.0.1:1")
    ledger.claim([(B, None)], "run2")
    ledger.record(
        [], "run2", [("run2", B, 1, "DELETE", 1_700_000_002.0, 9.0, 200, None, None, "q3", None)]
    )
    audit = ledger.audit()
    runs = audit.runs()
    assert [r["run_id"] for r in runs] == ["run2", "run1"]
    assert (runs[0]["requests"], runs[0]["outcomes"]) == (1, {"pending": 1})
    assert (runs[1]["requests"], runs[1]["outcomes"]) == (2, {"cancelled": 1, "pending": 1})
    assert (runs[1]["operator"], runs[1]["reason"], runs[1]["ticket"]) == (
        "ops",
        "bad import",
        "T-1",
    )
    history = audit.history(B)
    assert [(h["run_id"], h["http_status"], h["command"]) for h in history] == [
        ("run1", 503, "run"),
        ("run2", 200, "retry"),
    ]
    assert history[0]["sent_at"] == "2023-11-14T22:13:21.000Z"
    assert [a["request_id"] for a in audit.attempts()] == ["q1", "q2", "q3"]
    assert [a["request_id"] for a in audit.attempts(run_id="run1")] == ["q1", "q2"]
    assert [a["request_id"] for a in audit.attempts(since="2023-11-14T22:13:21")] == ["q2", "q3"]
    assert [r[0] for r in audit.run_orders("run2")] == [B]
    assert audit.prune("2023-11-14T22:13:22") == 2
    assert [a["request_id"] for a in audit.attempts()] == ["q3"]


def test_a_run_is_steered_and_publishes_its_status(ledger: Ledger) -> None:
    """`control` writes a run's standing commands; the run reads them, and publishes a status
    that is not taken for a command."""
    ledger.begin_run("run1", "run", "http://127.0.0.1:1")
    if isinstance(ledger.path, Path):
        file_control.command(ledger.path, "run1", {"paused": "1"})
    else:
        from worker.ledger import pg_control  # noqa: PLC0415

        pg_control.command(ledger.path, ["run1"], {"paused": "1"})
    ledger.publish("run1", {"done": 3})
    ledger.publish("run2", {"done": 4})
    assert ledger.steering("run1") == {"paused": "1"}
    assert ledger.steering("run2") == {}


def test_run_counts_and_timeline(ledger: Ledger) -> None:
    """What one run holds, by outcome and code; answered orders by second."""
    ledger.claim([(A, None), (B, None), (C, None)], "run1")
    ledger.record(
        [
            Result(A, Outcome.CANCELLED, 200, None, None, 1),
            Result(B, Outcome.REJECTED, 400, "R0008", None, 1),
        ],
        "run1",
    )
    ledger.claim([(C, None)], "run2", force=True)
    assert ledger.run_counts("run1") == ({"cancelled": 1, "rejected": 1}, {"R0008": 1})
    assert ledger.run_counts("run2") == ({"pending": 1}, {})
    assert sorted((o, n) for _, o, n in ledger.timeline()) == [("cancelled", 1), ("rejected", 1)]
    assert [r[0] for r in ledger.rows_of([C, A, "ABC0000000009"])] == [A, C]
    assert [r[0] for r in ledger.rows("pending")] == [C]


def test_each_run_s_busiest_second_is_remembered_apart(ledger_location: str) -> None:
    """Two runs sharing a ledger and a gateway, 50 requests each in the same second: the
    busiest second the ledger remembers is one run's (50), the most a run resuming alone may
    climb back to, not the two together's (100); a second with a 429 is not counted."""
    location = PostgresUrl(ledger_location) if "://" in ledger_location else Path(ledger_location)
    ledger = ledger_at(location)
    now = time.time()
    try:
        for run in ("a", "b"):
            ledger.begin_run(run, "run", "http://127.0.0.1:9/v1")
            rows = [(run, f"CDE{i:010d}", 1, "DELETE", now - 5 + i / 50, 1.0, 200, None, None,
                     f"{run}-{i}", None) for i in range(50)]  # fmt: skip
            rows.append((run, "CDE0000000099", 1, "DELETE", now - 3.5, 1.0, 429, "HTTP_429",
                         None, f"{run}-late", None))  # fmt: skip
            ledger.record([], run, rows)
        assert ledger.busiest_clean_second() == 50
    finally:
        ledger.close()


# A ledger of schema 4 as that version wrote it: the attempt log a table of text columns.
SCHEMA_4 = """
CREATE TABLE orders (order_id TEXT PRIMARY KEY, outcome TEXT NOT NULL, http_status INTEGER,
    error_code TEXT, message TEXT, attempts INTEGER NOT NULL DEFAULT 0, run_id TEXT NOT NULL,
    created_at TEXT NOT NULL, updated_at TEXT NOT NULL) WITHOUT ROWID;
CREATE INDEX orders_by_outcome ON orders(outcome, order_id);
CREATE TABLE runs (run_id TEXT PRIMARY KEY, command TEXT NOT NULL, base_url TEXT,
    started_at TEXT NOT NULL, finished_at TEXT, exit_code INTEGER, summary TEXT, operator TEXT,
    host TEXT, reason TEXT, ticket TEXT, details TEXT);
CREATE TABLE attempts (run_id TEXT NOT NULL, order_id TEXT NOT NULL, attempt INTEGER NOT NULL,
    method TEXT NOT NULL, sent_at TEXT NOT NULL, latency_ms REAL, http_status INTEGER,
    error_code TEXT, message TEXT, request_id TEXT NOT NULL, response_id TEXT);
CREATE INDEX attempts_by_order ON attempts(order_id);
CREATE TABLE control (run_id TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL,
    updated_at TEXT NOT NULL, PRIMARY KEY (run_id, key)) WITHOUT ROWID;
INSERT INTO runs (run_id, command, started_at, operator, reason)
    VALUES ('20261101T020000Z-aaaaaa', 'run', '2026-11-01T02:00:00.000Z', 'ops', 'cleanup');
INSERT INTO orders VALUES ('ABC0000000001', 'cancelled', 200, NULL, NULL, 2,
    '20261101T020000Z-aaaaaa', '2026-11-01T02:00:00.000Z', '2026-11-01T02:00:01.500Z');
INSERT INTO attempts VALUES
    ('20261101T020000Z-aaaaaa', 'ABC0000000001', 1, 'DELETE', '2026-11-01T02:00:00.250Z', 30.5,
     503, 'HTTP_503', 'busy', '0b7e0d4c-1f2a-4b3c-9d8e-7f6a5b4c3d2e', NULL),
    ('20261101T020000Z-aaaaaa', 'ABC0000000001', 2, 'DELETE', '2026-11-01T02:00:01.499Z', 12.0,
     200, NULL, NULL, '0b7e0d4c-1f2a-4b3c-9d8e-7f6a5b4c3d2f', 'resp-1');
PRAGMA user_version = 4;
"""
OLD_ROWS = [
    ("20261101T020000Z-aaaaaa", A, 1, "DELETE", "2026-11-01T02:00:00.250Z", 30.5, 503,
     "HTTP_503", "busy", "0b7e0d4c-1f2a-4b3c-9d8e-7f6a5b4c3d2e", None),
    ("20261101T020000Z-aaaaaa", A, 2, "DELETE", "2026-11-01T02:00:01.499Z", 12.0, 200,
     None, None, "0b7e0d4c-1f2a-4b3c-9d8e-7f6a5b4c3d2f", "resp-1"),
]  # fmt: skip


def _ledger_of(tmp_path: Path, script: str) -> Path:
    """A ledger file as an earlier version left it (its schema and rows in ``script``)."""
    path = tmp_path / "old.sqlite"
    db = sqlite3.connect(path)
    db.executescript(script)
    db.close()
    return path


def test_a_schema_4_ledger_keeps_its_attempt_log_compacted(tmp_path: Path) -> None:
    """A ledger of schema 4 opened by this version: its attempt log moves to the compact table
    in place, and the view ``attempts`` reads as the old table did (the same columns, the same
    text), to the tool and to a person's SQL; new rows are stored compact and read the same."""
    path = _ledger_of(tmp_path, SCHEMA_4)
    ledger = SqliteLedger(path)
    try:
        request_id = "5f0c2a1e-8b3d-4e6f-a7b8-c9d0e1f2a3b4"
        sent_at = 1_796_090_400.125  # 2026-12-01T02:00:00.125Z
        row = ("20261201T020000Z-bbbbbb", B, 1, "DELETE", sent_at, 8.2, 200, None, None,
               request_id, "RESP-XYZ")  # fmt: skip
        ledger.record([Result(B, Outcome.CANCELLED, 200, None, None, 1)], row[0], [row])
        history = ledger.audit().history(A)
    finally:
        ledger.close()
    assert [h["request_id"] for h in history] == [r[9] for r in OLD_ROWS]
    assert [h["sent_at"] for h in history] == [r[4] for r in OLD_ROWS]
    db = sqlite3.connect(path)
    try:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        kinds = dict(db.execute("SELECT name, type FROM sqlite_master"))
        assert kinds["attempts"] == "view"
        assert "attempts_schema4" not in kinds
        columns = ", ".join(ATTEMPT_COLUMNS)
        read = db.execute(f"SELECT {columns} FROM attempts ORDER BY seq").fetchall()
        new = ("20261201T020000Z-bbbbbb", B, 1, "DELETE", "2026-12-01T02:00:00.125Z", 8.2, 200,
               None, None, request_id, "RESP-XYZ")  # fmt: skip
        assert read == [*OLD_ROWS, new]
        stored = db.execute("SELECT typeof(request_id), length(request_id), typeof(sent_ms) "
                            "FROM attempt_log WHERE order_id = ?", (B,)).fetchone()  # fmt: skip
        assert stored == ("blob", 16, "integer")
        runbook = "SELECT run_id, http_status FROM attempts WHERE order_id = ? ORDER BY attempt"
        assert db.execute(runbook, (A,)).fetchall() == [(r[0], r[6]) for r in OLD_ROWS]
    finally:
        db.close()


# The same ledger as schema 5 wrote it: the attempt log compact behind its view, the orders a
# table of text columns.
_ATTEMPTS_4 = SCHEMA_4[
    SCHEMA_4.index("CREATE TABLE attempts") : SCHEMA_4.index("CREATE TABLE control")
]
_ROWS_4 = SCHEMA_4[SCHEMA_4.index("INSERT INTO attempts") : SCHEMA_4.index("PRAGMA")]
SCHEMA_5 = (
    SCHEMA_4.replace(_ATTEMPTS_4, """
CREATE TABLE run_keys (key INTEGER PRIMARY KEY, run_id TEXT NOT NULL UNIQUE);
CREATE TABLE attempt_log (run INTEGER NOT NULL, order_id TEXT NOT NULL, attempt INTEGER NOT NULL,
    method TEXT NOT NULL, sent_ms INTEGER NOT NULL, latency_ms REAL, http_status INTEGER,
    error_code TEXT, message TEXT, request_id BLOB NOT NULL, response_id BLOB);
CREATE INDEX attempt_log_by_order ON attempt_log(order_id);
CREATE VIEW attempts AS SELECT k.run_id AS run_id, a.order_id AS order_id, a.attempt AS attempt,
    a.method AS method, strftime('%Y-%m-%dT%H:%M:%fZ', a.sent_ms / 1000.0, 'unixepoch') AS sent_at,
    a.latency_ms AS latency_ms, a.http_status AS http_status, a.error_code AS error_code,
    a.message AS message, a.request_id AS request_id, a.response_id AS response_id, a.rowid AS seq
    FROM attempt_log a JOIN run_keys k ON k.key = a.run;
""")
    .replace(_ROWS_4, """
INSERT INTO run_keys VALUES (1, '20261101T020000Z-aaaaaa');
INSERT INTO attempt_log VALUES
    (1, 'ABC0000000001', 1, 'DELETE', 1793498400250, 30.5, 503, 'HTTP_503', 'busy',
     '0b7e0d4c-1f2a-4b3c-9d8e-7f6a5b4c3d2e', NULL),
    (1, 'ABC0000000001', 2, 'DELETE', 1793498401499, 12.0, 200, NULL, NULL,
     '0b7e0d4c-1f2a-4b3c-9d8e-7f6a5b4c3d2f', 'resp-1');
""")
    .replace("user_version = 4", "user_version = 5")
)  # fmt: skip
OLD_ORDER = ("ABC0000000001", "cancelled", 200, None, None, 2, "20261101T020000Z-aaaaaa",
             "2026-11-01T02:00:00.000Z", "2026-11-01T02:00:01.500Z")  # fmt: skip


@pytest.mark.parametrize("old", [SCHEMA_4, SCHEMA_5], ids=["schema4", "schema5"])
def test_an_older_ledger_keeps_its_orders_compacted(tmp_path: Path, old: str) -> None:
    """A ledger of schema 4 or 5 opened by this version: its orders move to the compact table
    in place (the run as its key, the times as integer milliseconds), and the view ``orders``
    reads as the old table did, to the tool and to the runbook's SQL; a person's INSERT, UPDATE
    and DELETE on either view still change the ledger."""
    path = _ledger_of(tmp_path, old)
    ledger = SqliteLedger(path)
    try:
        assert list(ledger.rows_of([A])) == [OLD_ORDER[:6] + OLD_ORDER[8:]]
        ledger.record([Result(B, Outcome.REJECTED, 409, "ORDER_CLOSED", "closed", 1)], "run-b")
        assert ledger.counts() == ({"cancelled": 1, "rejected": 1}, {"ORDER_CLOSED": 1})
        history = ledger.audit().history(A)
    finally:
        ledger.close()
    assert [h["request_id"] for h in history] == [r[9] for r in OLD_ROWS]
    db = sqlite3.connect(path)
    try:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        kinds = dict(db.execute("SELECT name, type FROM sqlite_master"))
        assert (kinds["orders"], kinds["attempts"]) == ("view", "view")
        assert "orders_schema5" not in kinds
        assert db.execute("SELECT * FROM orders WHERE order_id = ?", (A,)).fetchall() == [OLD_ORDER]
        stored = db.execute("SELECT typeof(run), typeof(created_ms), typeof(updated_ms) "
                            "FROM order_state").fetchall()  # fmt: skip
        assert stored == [("integer", "integer", "integer")] * 2
        runbook = (  # deploy/RUNBOOK.md, what happened to order X
            "SELECT o.outcome, o.updated_at, a.sent_at, a.http_status, r.operator FROM orders o "
            "LEFT JOIN attempts a ON a.order_id = o.order_id "
            "LEFT JOIN runs r ON r.run_id = a.run_id WHERE o.order_id = ? ORDER BY a.seq"
        )
        assert db.execute(runbook, (A,)).fetchall() == [
            ("cancelled", OLD_ORDER[8], r[4], r[6], "ops") for r in OLD_ROWS
        ]
        with db:  # a person's repairs, through the views
            db.execute("UPDATE orders SET outcome = 'pending', updated_at = ? WHERE order_id = ?",
                       ("2026-12-01T00:00:00.007Z", A))  # fmt: skip
            db.execute("INSERT INTO orders (order_id, outcome, run_id, created_at, updated_at) "
                       "VALUES (?, 'pending', 'by-hand', ?2, ?2)",
                       (C, "2026-12-01T00:00:00.001Z"))  # fmt: skip
            db.execute("INSERT INTO attempts (run_id, order_id, attempt, method, sent_at, "
                       "request_id) VALUES ('by-hand', ?, 1, 'GET', ?, 'r-1')",
                       (C, "2026-12-01T00:00:00.002Z"))  # fmt: skip
            db.execute("DELETE FROM attempts WHERE order_id = ? AND attempt = 1", (A,))
            db.execute("DELETE FROM orders WHERE order_id = ?", (B,))
        read = db.execute("SELECT order_id, outcome, attempts, run_id, updated_at FROM orders")
        assert read.fetchall() == [
            (A, "pending", 2, OLD_ORDER[6], "2026-12-01T00:00:00.007Z"),
            (C, "pending", 0, "by-hand", "2026-12-01T00:00:00.001Z"),
        ]
        read = db.execute("SELECT order_id, attempt, sent_at, run_id FROM attempts ORDER BY seq")
        assert read.fetchall() == [
            (A, 2, OLD_ROWS[1][4], OLD_ROWS[1][0]),
            (C, 1, "2026-12-01T00:00:00.002Z", "by-hand"),
        ]
    finally:
        db.close()


def test_request_ids_read_back_as_written(file_ledger: Ledger) -> None:
    """A request or response id reads back from ``attempts`` exactly as it was written: a
    canonical UUID is stored as its 16 bytes, any other text (upper case, no dashes, braces, a
    gateway's own id) as text."""
    canonical = "0b7e0d4c-1f2a-4b3c-9d8e-7f6a5b4c3d2e"
    ids = [canonical, canonical.upper(), canonical.replace("-", ""), "{" + canonical + "}",
           "0b7e0d4c 1f2a-4b3c-9d8e-7f6a5b4c3d2e", "apim-7f6a5b4c", "x" * 36]  # fmt: skip
    rows = [("run1", A, n + 1, "DELETE", 1_796_090_400.5, 1.0, 200, None, None, i, i)
            for n, i in enumerate(ids)]  # fmt: skip
    file_ledger.record([], "run1", rows)
    assert isinstance(file_ledger, SqliteLedger)
    db = sqlite3.connect(file_ledger.path)
    try:
        read = db.execute("SELECT request_id, response_id FROM attempts ORDER BY attempt")
        assert read.fetchall() == [(i, i) for i in ids]
        kinds = db.execute("SELECT typeof(request_id) FROM attempt_log ORDER BY attempt")
        assert [k for (k,) in kinds] == ["blob"] + ["text"] * (len(ids) - 1)
    finally:
        db.close()


def test_attempt_rows_go_in_a_few_statement_texts(file_ledger: Ledger) -> None:
    """Batches of every size from 1 to 300 rows: every row is written, and with at most eight
    statement texts, which the connection keeps prepared (one text per batch size filled the
    statement cache with large statements: 20 MiB more over a 100,000-order run)."""
    from worker.ledger.sqlite_sql import insert_attempts  # noqa: PLC0415 - the batching itself

    texts: set[str] = set()
    written = 0
    for size in range(1, 301):
        rows = [("run1", f"ABC{written + n:010d}", 1, "DELETE", 1_796_090_400.0, 1.0, 200,
                 None, None, f"id-{written + n}", None) for n in range(size)]  # fmt: skip
        for sql, values in insert_attempts(rows, lambda _run: 1):
            texts.add(sql)
            assert len(values) == sql.count("(?") * 11
        file_ledger.record([], "run1", rows)
        written += size
    assert len(texts) <= 8
    assert isinstance(file_ledger, SqliteLedger)
    db = sqlite3.connect(file_ledger.path)
    try:
        assert db.execute(
            "SELECT count(*), count(DISTINCT request_id) FROM attempts"
        ).fetchone() == (
            written,
            written,
        )
    finally:
        db.close()
