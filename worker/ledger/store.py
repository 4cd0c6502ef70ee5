"""All SQL: the results ledger, one row per order, the source of truth of every run.

SQLite in WAL mode. Writes are idempotent upserts, batched by the caller. A final outcome is never
downgraded to `pending`. One process writes a ledger at a time (an exclusive flock on the file).
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Iterable, Sequence
from pathlib import Path

import orjson

from worker.domain.errors import LedgerError
from worker.domain.models import Outcome, Result, RunRecord
from worker.ledger.audit import AuditLog, insert_attempts, upgrade, upgrade_file
from worker.ledger.control import commands_of, hold, publish
from worker.ledger.plan import Plan
from worker.ledger.reading import LedgerReads
from worker.ledger.schema import (
    CLAIM_BATCH,
    FINAL_VALUES,
    SCHEMA_VERSION,
    UPSERT_BATCH,
)
from worker.ledger.sqlite import Transaction, connect_readonly, lock
from worker.runtime.clock import now_iso


class Ledger(LedgerReads):
    """The SQLite ledger. Not thread-safe: use it from one thread at a time."""

    def __init__(self, path: Path, *, readonly: bool = False) -> None:
        self.path = path
        self.readonly = readonly
        self._lock_fd: int | None = None
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

    _IN = "IN (SELECT value FROM json_each(?))"  # a list of IDs as one parameter

    def _ids(self, ids: Sequence[str]) -> object:
        """A list of IDs as the parameter of ``_IN``."""
        return _json(list(ids))

    @property
    def lease_every_s(self) -> float | None:
        """How often a run renews its lease: never, a file is one run's at a time."""
        return None

    def renew(self, run_id: str) -> None:
        """Renew a run's lease (a shared ledger's; a file's lock needs none)."""

    def still_mine(self, order_ids: list[str], run_id: str) -> list[str]:
        """Of these orders, those still `pending` under this run, in the same order."""
        held = {
            row[0]
            for row in self._db.execute(
                "SELECT order_id FROM orders WHERE run_id = ? AND outcome = 'pending' AND "
                f"order_id {self._IN}",
                (run_id, self._ids(order_ids)),
            )
        }
        return [order_id for order_id in order_ids if order_id in held]

    def close(self) -> None:
        """Close the connection and release the lock."""
        db = getattr(self, "_db", None)
        if db is not None:
            db.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    # -- runs ---------------------------------------------------------------------------------

    def begin_run(
        self, run_id: str, command: str, base_url: str, who: RunRecord | None = None
    ) -> None:
        """Note the start of a run: who started it, why, from what, with which limits."""
        who = who or RunRecord()
        self._write(
            "INSERT INTO runs (run_id, command, base_url, started_at, operator, host, reason, "
            "ticket, details) VALUES (?,?,?,?,?,?,?,?,?)",
            [
                (
                    run_id,
                    command,
                    base_url,
                    now_iso(),
                    who.operator,
                    who.host,
                    who.reason,
                    who.ticket,
                    json.dumps(who.details),
                )
            ],
        )

    def audit(self) -> AuditLog:
        """The runs and the attempt log, for `runs`, `history`, `audit`, `prune`."""
        return AuditLog(self._db, self.path)

    def target(self) -> str | None:
        """The base URL this ledger belongs to: its first recorded run's that may have sent
        something (a run that ended with no request, a wrong host for one, does not bind it);
        None when there is none."""
        row = self._db.execute(
            "SELECT base_url FROM runs WHERE base_url IS NOT NULL AND (finished_at IS NULL "
            "OR coalesce(json_extract(summary, '$.requests'), 1) > 0) ORDER BY started_at LIMIT 1"
        ).fetchone()
        return None if row is None else str(row[0])

    def end_run(self, run_id: str, exit_code: int, summary: dict[str, object]) -> None:
        """Note how a run ended."""
        self._write(
            "UPDATE runs SET finished_at = ?, exit_code = ?, summary = ? WHERE run_id = ?",
            [(now_iso(), exit_code, json.dumps(summary), run_id)],
        )

    # -- input --------------------------------------------------------------------------------

    def existing(self, ids: Sequence[str]) -> dict[str, tuple[str, str, bool]]:
        """order_id -> (outcome, run_id, may have been sent) for the IDs already in the ledger.

        An order may have been sent, its answer unknown, when it failed (retryable_failed), or
        when it is `pending` with requests spent, or `pending` under a run that never ended (a
        crash: its requests in flight were not recorded). An order a run claimed and stopped
        before sending (attempts 0, the run ended) was never sent: no look-up is needed."""
        rows = self._db.execute(
            "SELECT o.order_id, o.outcome, o.run_id, o.outcome = 'retryable_failed' OR "
            "(o.outcome = 'pending' AND (o.attempts > 0 OR r.finished_at IS NULL)) "
            f"FROM orders o LEFT JOIN runs r ON r.run_id = o.run_id WHERE o.order_id {self._IN}",
            (self._ids(ids),),
        )
        return {order_id: (outcome, run_id, bool(sent)) for order_id, outcome, run_id, sent in rows}

    def claim(
        self,
        batch: Sequence[tuple[str, Result | None]],
        run_id: str,
        *,
        force: bool = False,
        dry: bool = False,
    ) -> Plan:
        """Decide each (ID, invalid-result-or-None) of a batch and mark the ones to send.

        Orders already handled by this run are duplicates; final ones are skipped unless
        ``force``; the rest are marked `pending` under this run before anything is sent.
        A ``dry`` claim writes nothing to the ledger: it remembers what it saw in a temporary
        table, so that memory does not grow with the input.
        """
        if not dry and self.lease_every_s is not None:  # a ledger several runs share
            return self._claim_shared(batch, run_id, force)
        known = self._known([order_id for order_id, _ in batch], run_id, dry)
        plan = Plan()
        for order_id, invalid in batch:
            seen = known.get(order_id)
            if seen is not None and seen[1] == run_id:
                plan.duplicates += 1
                continue
            known[order_id] = ("", run_id, False)
            if seen is not None and seen[0] in FINAL_VALUES and not force:
                plan.skipped.append(seen[0])
            elif invalid is not None:
                plan.invalid.append(invalid)
            else:
                plan.to_send.append(order_id)
                if seen is not None and seen[2]:
                    plan.uncertain.add(order_id)
        if not dry:
            self._write_plan(plan, run_id)
        return plan

    def _claim_shared(
        self, batch: Sequence[tuple[str, Result | None]], run_id: str, force: bool
    ) -> Plan:
        raise NotImplementedError  # a file is one run's: its claims need no lease

    def _write_plan(self, plan: Plan, run_id: str) -> None:
        """Mark the orders to send `pending` under this run; record the invalid ones."""
        stamp = now_iso()
        with self._transaction():
            if plan.to_send:
                self._db.execute(CLAIM_BATCH, (_json(plan.to_send), run_id, stamp))
            if plan.invalid:
                self._db.execute(UPSERT_BATCH, (_json(plan.invalid), run_id, stamp))

    def _known(self, ids: list[str], run_id: str, dry: bool) -> dict[str, tuple[str, str, bool]]:
        """``existing``; in a dry run, the IDs it saw before count as this run's."""
        known = self.existing(ids)
        if dry:
            fresh = self._first_sightings(ids)
            for order_id in ids:
                if order_id not in fresh:
                    known[order_id] = ("", run_id, False)
        return known

    def _scratch(self) -> sqlite3.Connection:
        """Where a dry run remembers the IDs it saw: a temporary table of this connection."""
        return self._db

    def _first_sightings(self, ids: Sequence[str]) -> set[str]:
        """The IDs not seen before in this dry run (a temporary table, on disk)."""
        scratch = self._scratch()
        scratch.execute("CREATE TEMP TABLE IF NOT EXISTS dry_seen (order_id TEXT PRIMARY KEY)")
        rows = scratch.execute(
            "INSERT INTO temp.dry_seen SELECT value FROM json_each(?) WHERE true "
            "ON CONFLICT DO NOTHING RETURNING order_id",
            (_json(list(ids)),),
        ).fetchall()
        return {r[0] for r in rows}

    def candidates(self, outcomes: Iterable[Outcome], after: str, limit: int) -> list[str]:
        """Order IDs with these outcomes, in ID order, after ``after`` (keyset paging)."""
        names = [o.value for o in outcomes]
        marks = ",".join("?" * len(names))
        rows = self._db.execute(
            f"SELECT order_id FROM orders WHERE outcome IN ({marks}) AND order_id > ? "
            "ORDER BY order_id LIMIT ?",
            (*names, after, limit),
        )
        return [r[0] for r in rows]

    # -- results ------------------------------------------------------------------------------

    def record(
        self,
        results: Sequence[Result],
        run_id: str,
        attempts: Sequence[Sequence[object]] = (),
    ) -> None:
        """Upsert a batch of results and append their attempts in one transaction (the results
        in one statement, their rows one JSON parameter serialised in C; the attempts 200 rows a
        statement)."""
        if results or attempts:
            with self._transaction():
                for sql, values in insert_attempts(attempts):
                    self._db.execute(sql, values)
                if results:
                    self._db.execute(UPSERT_BATCH, (_json(results), run_id, now_iso()))

    def steering(self, run_id: str) -> dict[str, str]:
        """The standing `control` commands of this run."""
        return commands_of(self._db, run_id)

    def publish(self, run_id: str, status: dict[str, object]) -> None:
        """This run's status, for `control status`."""
        publish(self._db, run_id, status)

    # -- plumbing -----------------------------------------------------------------------------

    def _write(self, sql: str, rows: Iterable[Sequence[object]]) -> None:
        with self._transaction():
            self._db.executemany(sql, rows)

    def _transaction(self) -> Transaction:
        return Transaction(self._db, self.path)


def _json(value: object) -> str:
    """JSON text for one batch parameter (orjson: dataclasses and enums natively, in C)."""
    return orjson.dumps(value).decode()
