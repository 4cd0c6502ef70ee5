"""The SQLite ledger: one file, one run writing it at a time (an exclusive flock on the file).

SQLite in WAL mode. Writes are idempotent upserts, batched by the caller, each batch one
statement whose rows are one JSON parameter (the whole batch runs inside SQLite, which releases
the GIL). A final outcome is never downgraded to `pending`.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from worker.domain.errors import LedgerError
from worker.domain.models import Result, RunRecord
from worker.ledger.base import Ledger, decide_batch, json_param, result_rows
from worker.ledger.control import hold, publish
from worker.ledger.plan import Plan
from worker.ledger.schema import ORDER_STATE_SINCE, SCHEMA_VERSION
from worker.ledger.sqlite import Transaction, connect_readonly, lock, upgrade, upgrade_file
from worker.ledger.sqlite_sql import (
    BEGIN_RUN,
    CLAIM_BATCH,
    NEW_RUN_KEY,
    READ_AS_SCHEMA_5,
    RUN_KEY,
    STATEMENTS,
    UPSERT_BATCH,
    insert_attempts,
)
from worker.ledger.statements import Attempts, Row
from worker.runtime.clock import now_iso


def _now_ms() -> int:
    """Now, integer milliseconds since the epoch (the stored form of ``now_iso``)."""
    return time.time_ns() // 1_000_000


class SqliteLedger(Ledger):
    """The ledger in a SQLite file. Not thread-safe: use it from one thread at a time."""

    sql = STATEMENTS
    path: Path

    def __init__(self, path: Path, *, readonly: bool = False) -> None:
        self.path = path
        self.readonly = readonly
        self._lock_fd: int | None = None
        self._run_keys: dict[str, int] = {}  # run_id -> its key in the orders and the attempt log
        try:
            if readonly:
                if not path.is_file():
                    raise LedgerError(f"{path}: no ledger at this path")
                self._db = connect_readonly(path)
            else:
                self._lock_fd = lock(path)
                self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("PRAGMA busy_timeout=5000")
            self._db.execute("PRAGMA temp_store=FILE")
            self._check_schema()
            if not readonly:
                hold(self._db)
        except sqlite3.Error as exc:
            self.close()
            raise LedgerError(f"{path}: cannot open the ledger: {exc}") from None

    def _check_schema(self) -> None:
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise LedgerError(
                f"{self.path}: ledger schema {version} is newer than this tool ({SCHEMA_VERSION})"
            )
        if version == 0 and self.readonly:
            raise LedgerError(
                f"{self.path}: the ledger is not ready (a run is creating it, or it is not a "
                "ledger): try again in a moment"
            )
        if version < SCHEMA_VERSION and not self.readonly:
            upgrade(self._db)
        elif version < SCHEMA_VERSION:
            self._db.close()  # upgraded in place when no run holds it, then read
            upgrade_file(self.path)
            self._db = connect_readonly(self.path)
            if self._db.execute("PRAGMA user_version").fetchone()[0] < ORDER_STATE_SINCE:
                self.sql = READ_AS_SCHEMA_5  # a read-only copy, read as it was written

    @property
    def lease_every_s(self) -> float | None:
        """Never: a file is one run's at a time."""
        return None

    def renew(self, run_id: str) -> None:
        """Nothing to renew: the file's lock is the run's while it lives."""

    def close(self) -> None:
        """Close the connection and release the lock."""
        db = getattr(self, "_db", None)
        if db is not None:
            db.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
        self._forget_sightings()

    def begin_run(
        self, run_id: str, command: str, base_url: str, who: RunRecord | None = None
    ) -> None:
        """Note the start of a run: who started it, why, from what, with which limits."""
        who = who or RunRecord()
        row = (run_id, command, base_url, now_iso(), who.operator, who.host, who.reason)
        self._change(BEGIN_RUN, (*row, who.ticket, json.dumps(who.details)))

    def _claim(self, batch: Sequence[tuple[str, Result | None]], run_id: str, force: bool) -> Plan:
        """Decide a batch (no other run writes this file) and mark it in one transaction."""
        plan = decide_batch(batch, self.existing([i for i, _ in batch]), run_id, force)
        if plan.to_send or plan.invalid:
            with self._keyed_transaction():
                stamp = (self._run_key(run_id), _now_ms())
                if plan.to_send:
                    self._db.execute(CLAIM_BATCH, (json_param(plan.to_send), *stamp))
                if plan.invalid:
                    self._db.execute(UPSERT_BATCH, (result_rows(plan.invalid), *stamp))
        return plan

    def record(self, results: Sequence[Result], run_id: str, attempts: Attempts = ()) -> None:
        """Upsert a batch of results and append their attempts in one transaction (the results
        in one statement, their rows one JSON parameter serialised in C; the attempts 128 rows a
        statement)."""
        if results or attempts:
            with self._keyed_transaction():
                for sql, values in insert_attempts(attempts, self._run_key):
                    self._db.execute(sql, values)
                if results:
                    stamp = (self._run_key(run_id), _now_ms())
                    self._db.execute(UPSERT_BATCH, (result_rows(results), *stamp))

    @contextmanager
    def _keyed_transaction(self) -> Iterator[None]:
        """A transaction that may make run keys: if it is rolled back, so are they."""
        try:
            with self._transaction():
                yield
        except BaseException:
            self._run_keys.clear()  # a key made in a transaction rolled back is no key
            raise

    def _run_key(self, run_id: str) -> int:
        """The run's integer key in the orders and the attempt log, made on first use."""
        key = self._run_keys.get(run_id)
        if key is None:
            self._db.execute(NEW_RUN_KEY, (run_id,))
            key = self._run_keys[run_id] = int(self._db.execute(RUN_KEY, (run_id,)).fetchone()[0])
        return key

    def publish(self, run_id: str, status: dict[str, object]) -> None:
        """This run's status, for `control status`."""
        publish(self._db, run_id, status)

    # -- plumbing -----------------------------------------------------------------------------

    def _list(self, values: Sequence[str]) -> object:
        return json_param(list(values))

    def _fetch(self, sql: str, args: Sequence[object] = ()) -> list[Row]:
        return list(self._stream(sql, args))

    def _stream(self, sql: str, args: Sequence[object] = ()) -> Iterator[Row]:
        try:
            return iter(self._db.execute(sql, args))
        except sqlite3.OperationalError as exc:
            hint = (
                ": a ledger of an earlier version is upgraded by any command that writes it "
                "(run, retry)"
                if "no such" in str(exc)
                else ""
            )
            raise LedgerError(f"{self.path}: cannot read the ledger ({exc}){hint}") from None

    def _change(self, sql: str, args: Sequence[object]) -> int:
        with self._transaction():
            return int(self._db.execute(sql, args).rowcount)

    def _transaction(self) -> Transaction:
        return Transaction(self._db, self.path)
