"""The ledger's history: who ran each run and why, and the append-only attempt log (one row per
request to the API); upgrading a ledger of an earlier schema in place."""

from __future__ import annotations

import itertools
import json
import os
import sqlite3
from collections.abc import Iterator, Sequence
from pathlib import Path

from worker.domain.answer import Answer
from worker.domain.classifier import error_code_for
from worker.domain.errors import LedgerError
from worker.ledger.reading import redacted
from worker.ledger.schema import (
    ATTEMPT_COLUMNS,
    CSV_COLUMNS,
    RUN_COLUMNS,
    RUN_COLUMNS_ADDED,
    SCHEMA,
)
from worker.ledger.sqlite import lock
from worker.runtime.redaction import redact


def upgrade(db: sqlite3.Connection) -> None:
    """Bring a ledger of an earlier schema (or a new file) to this one, in place."""
    has_runs = db.execute("SELECT 1 FROM sqlite_master WHERE name = 'runs'").fetchone()
    if has_runs:
        present = {row[1] for row in db.execute("PRAGMA table_info(runs)")}
        for column in RUN_COLUMNS_ADDED:
            if column not in present:
                db.execute(f"ALTER TABLE runs ADD COLUMN {column} TEXT")
    db.executescript(SCHEMA)


def upgrade_file(path: Path) -> None:
    """Upgrade the ledger at ``path`` when no run holds it (a run upgrades it as it opens it);
    where it cannot be written (a read-only copy), it is read as it is."""
    try:
        fd = lock(path)
    except LedgerError:
        return
    try:
        db = sqlite3.connect(path, isolation_level=None)
        try:
            upgrade(db)
        finally:
            db.close()
    except sqlite3.Error:
        pass  # read as it is: what it lacks (the attempt log) is reported when asked for
    finally:
        os.close(fd)


def attempt_row(
    run_id: str, order_id: str, method: str, number: int, answer: Answer
) -> tuple[object, ...]:
    """One request in the attempt log, in the ledger's ATTEMPT_COLUMNS order: run_id,
    order_id, attempt, method, sent_at, latency_ms, http_status, error_code, message
    (redacted), request_id, response_id. (Built for every request: a 200 takes the short way.)"""
    status = answer.status
    if status == 200 and answer.failure is None:
        code = message = None
    else:
        code = error_code_for(status, answer.code, answer.failure)
        message = redact.clean(answer.message) if answer.message else None
    return (
        run_id,
        order_id,
        number,
        method,
        answer.sent_at,  # seconds since the epoch: SQLite formats it (in C) as it inserts
        round(answer.latency_ms, 1),
        status,
        code,
        message,
        answer.request_id,
        answer.response_id,
    )


ROWS_PER_INSERT = 200  # attempt rows in one INSERT statement (2,200 parameters)
_SENT_AT = ATTEMPT_COLUMNS.index("sent_at")
_ONE_ROW = (
    "("
    + ",".join(
        "strftime('%Y-%m-%dT%H:%M:%fZ', ?, 'unixepoch')" if k == _SENT_AT else "?"
        for k in range(len(ATTEMPT_COLUMNS))
    )
    + ")"
)
_INSERT = f"INSERT INTO attempts ({', '.join(ATTEMPT_COLUMNS)}) VALUES "
_FULL_INSERT = _INSERT + ",".join([_ONE_ROW] * ROWS_PER_INSERT)


def insert_attempts(
    rows: Sequence[Sequence[object]],
) -> Iterator[tuple[str, list[object]]]:
    """(SQL, parameters) appending these attempt rows, ROWS_PER_INSERT rows a statement
    (fewer statements to step through than one per row)."""
    for start in range(0, len(rows), ROWS_PER_INSERT):
        chunk = rows[start : start + ROWS_PER_INSERT]
        sql = (
            _FULL_INSERT
            if len(chunk) == ROWS_PER_INSERT
            else _INSERT + ",".join([_ONE_ROW] * len(chunk))
        )
        yield sql, list(itertools.chain.from_iterable(chunk))


class AuditLog:
    """Reads and prunes a ledger's runs and attempt log."""

    ORDER = "rowid"  # the attempt log's order of writing

    def __init__(self, db: sqlite3.Connection, path: Path) -> None:
        self._db = db
        self._path = path

    def runs(self) -> list[dict[str, object]]:
        """Every run, newest first, with its requests and outcomes (its summary's, or for a
        run that never ended, counted from the attempt log and the orders it holds)."""
        found = self._query(
            f"SELECT {', '.join(RUN_COLUMNS)} FROM runs ORDER BY started_at DESC, run_id DESC"
        )
        runs = []
        for row in found:
            run: dict[str, object] = dict(zip(RUN_COLUMNS, row, strict=True))
            summary = _object(run.pop("summary"))
            run["details"] = _object(run["details"])
            counted = summary.get("outcomes")
            if summary:
                run["requests"] = summary.get("requests", summary.get("would_send", 0))
                run["outcomes"] = (
                    {k: v for k, v in counted.items() if v} if isinstance(counted, dict) else {}
                )
            else:
                run["requests"] = self._scalar(
                    "SELECT COUNT(*) FROM attempts WHERE run_id = ?", run["run_id"]
                )
                run["outcomes"] = {
                    str(outcome): n
                    for outcome, n in self._query(
                        "SELECT outcome, COUNT(*) FROM orders WHERE run_id = ? GROUP BY outcome",
                        run["run_id"],
                    )
                }
            runs.append(run)
        return runs

    def run(self, run_id: str) -> dict[str, object] | None:
        """One run, as `runs` lists it; None when there is no such run."""
        return next((r for r in self.runs() if r["run_id"] == run_id), None)

    def history(self, order_id: str) -> list[dict[str, object]]:
        """Every attempt on one order across all runs, oldest first, with each run's command,
        operator, reason and ticket."""
        cols = ", ".join(f"a.{c}" for c in ATTEMPT_COLUMNS)
        rows = self._query(
            f"SELECT {cols}, r.command, r.operator, r.reason, r.ticket FROM attempts a "
            "LEFT JOIN runs r ON r.run_id = a.run_id WHERE a.order_id = ? "
            f"ORDER BY a.sent_at, a.{self.ORDER}",
            order_id,
        )
        keys = (*ATTEMPT_COLUMNS, "command", "operator", "reason", "ticket")
        return [_clean(dict(zip(keys, row, strict=True))) for row in rows]

    def attempts(
        self, since: str | None = None, run_id: str | None = None
    ) -> Iterator[dict[str, object]]:
        """The attempt log in the order it was written, from ``since`` (ISO time), of one run."""
        where, args = [], []
        if since is not None:
            where.append("sent_at >= ?")
            args.append(since)
        if run_id is not None:
            where.append("run_id = ?")
            args.append(run_id)
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        rows = self._query(
            f"SELECT {', '.join(ATTEMPT_COLUMNS)} FROM attempts {clause} ORDER BY {self.ORDER}",
            *args,
        )
        for row in rows:
            yield _clean(dict(zip(ATTEMPT_COLUMNS, row, strict=True)))

    def run_orders(self, run_id: str) -> Iterator[tuple[object, ...]]:
        """The orders one run dealt with (it holds their row, or it sent them a request), as
        the report's CSV rows, with their current outcome."""
        cols = ", ".join(CSV_COLUMNS)
        rows = self._query(
            f"SELECT {cols} FROM orders WHERE run_id = ? OR order_id IN "
            "(SELECT order_id FROM attempts WHERE run_id = ?) ORDER BY order_id",
            run_id,
            run_id,
        )
        yield from redacted(rows)

    def prune(self, before: str) -> int:
        """Delete the attempt rows sent before ``before`` (ISO time); how many went."""
        try:
            self._db.execute("BEGIN IMMEDIATE")
            gone = self._db.execute("DELETE FROM attempts WHERE sent_at < ?", (before,)).rowcount
            self._db.execute("COMMIT")
        except sqlite3.Error as exc:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise LedgerError(f"{self._path}: cannot prune the attempt log: {exc}") from None
        return int(gone)

    def _query(self, sql: str, *args: object) -> Iterator[tuple[object, ...]]:
        try:
            return iter(self._db.execute(sql, args))
        except sqlite3.OperationalError as exc:
            raise LedgerError(
                f"{self._path}: cannot read its history ({exc}): a ledger of an earlier version "
                "is upgraded by any command that writes it (run, retry)"
            ) from None

    def _scalar(self, sql: str, *args: object) -> int:
        row = next(self._query(sql, *args), (0,))
        return int(str(row[0]))


def _object(text: object) -> dict[str, object]:
    if not text:
        return {}
    try:
        value = json.loads(str(text))
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _clean(row: dict[str, object]) -> dict[str, object]:
    message = row.get("message")
    if isinstance(message, str):
        row["message"] = redact.clean(message)
    return row
