"""The ledger's one interface, and the behaviour both backends share.

A backend (``SqliteLedger``, ``PgLedger``) brings its connection (``_fetch``, ``_stream``,
``_change``, ``_list``), its statements in its own dialect (``sql``, a ``Statements``), and
what only it does: opening, beginning a run, claiming (a file is one run's; a database is
shared under leases), recording, publishing. Everything else, the reads, the run's end, the
attempt log's reads, a dry run's claim, is written here once against ``Statements``.
"""

from __future__ import annotations

import json
import re
import sqlite3
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Sequence

import orjson

from worker.domain.location import Location
from worker.domain.models import Outcome, Result, RunRecord
from worker.ledger.audit import AuditLog, redacted
from worker.ledger.plan import Plan
from worker.ledger.schema import FINAL_VALUES, RUN_COLUMNS
from worker.ledger.statements import Attempts, Row, Statements
from worker.runtime.clock import now_iso

Known = dict[str, tuple[str, str, bool]]  # order_id -> (outcome, run_id, may have been sent)


class Ledger(ABC):
    """One ledger: the orders, the runs, the attempt log, the control table."""

    path: Location  # shown where the ledger is named
    readonly: bool
    sql: Statements
    _seen: sqlite3.Connection | None = None  # a dry run's memory of the IDs it saw

    # -- the backend's own --------------------------------------------------------------------

    @abstractmethod
    def close(self) -> None:
        """Close the connection (and release what the backend holds)."""

    @property
    @abstractmethod
    def lease_every_s(self) -> float | None:
        """How often a run renews its lease; None where a run needs none (a locked file)."""

    @abstractmethod
    def renew(self, run_id: str) -> None:
        """Renew a run's lease on the orders it holds."""

    @abstractmethod
    def begin_run(
        self, run_id: str, command: str, base_url: str, who: RunRecord | None = None
    ) -> None:
        """Note the start of a run: who started it, why, from what, with which limits."""

    @abstractmethod
    def _claim(self, batch: Sequence[tuple[str, Result | None]], run_id: str, force: bool) -> Plan:
        """Decide a batch and mark the orders to send `pending` under this run."""

    @abstractmethod
    def record(self, results: Sequence[Result], run_id: str, attempts: Attempts = ()) -> None:
        """Upsert a batch of results and append their attempts in one transaction."""

    @abstractmethod
    def publish(self, run_id: str, status: dict[str, object]) -> None:
        """This run's status, for `control status`."""

    @abstractmethod
    def _list(self, values: Sequence[str]) -> object:
        """A list of values as one statement parameter."""

    @abstractmethod
    def _fetch(self, sql: str, args: Sequence[object] = ()) -> list[Row]:
        """A query's rows, all read (a small answer)."""

    @abstractmethod
    def _stream(self, sql: str, args: Sequence[object] = ()) -> Iterator[Row]:
        """A query's rows as they are read (a large report holds no list of them)."""

    @abstractmethod
    def _change(self, sql: str, args: Sequence[object]) -> int:
        """One statement in a transaction of its own; the rows it changed."""

    def _first(self, sql: str, args: Sequence[object] = ()) -> Row | None:
        rows = self._fetch(sql, args)
        return rows[0] if rows else None

    # -- runs ---------------------------------------------------------------------------------

    def end_run(self, run_id: str, exit_code: int, summary: dict[str, object]) -> None:
        """Note how a run ended."""
        self._change(self.sql.end_run, (now_iso(), exit_code, json.dumps(summary), run_id))

    def target(self) -> str | None:
        """The base URL this ledger belongs to: its first recorded run's that may have sent
        something (a run that ended with no request, a wrong host for one, does not bind it);
        None when there is none."""
        row = self._first(self.sql.target)
        return None if row is None else str(row[0])

    def last_run(self) -> dict[str, object] | None:
        """The most recent run's row."""
        row = self._first(self.sql.last_run)
        return None if row is None else dict(zip(RUN_COLUMNS[:7], row, strict=True))

    def steering(self, run_id: str) -> dict[str, str]:
        """The standing `control` commands of this run."""
        return {str(k): str(v) for k, v in self._fetch(self.sql.commands, (run_id,))}

    def audit(self) -> AuditLog:
        """The runs and the attempt log, for `runs`, `history`, `audit`, `prune`."""
        return AuditLog(self.sql, self._stream, self._change)

    # -- input --------------------------------------------------------------------------------

    def existing(self, ids: Sequence[str]) -> Known:
        """order_id -> (outcome, run_id, may have been sent) for the IDs already in the ledger.

        An order may have been sent, its answer unknown, when it failed (retryable_failed), or
        when it is `pending` with requests spent, or `pending` under a run that never ended (a
        crash: its requests in flight were not recorded). An order a run claimed and stopped
        before sending (attempts 0, the run ended) was never sent: no look-up is needed."""
        rows = self._fetch(self.sql.existing, (self._list(ids),))
        return {str(i): (str(outcome), str(run), bool(sent)) for i, outcome, run, sent in rows}

    def still_mine(self, order_ids: list[str], run_id: str) -> list[str]:
        """Of these orders, those still `pending` under this run, in the same order."""
        held = {row[0] for row in self._fetch(self.sql.still_mine, (run_id, self._list(order_ids)))}
        return [order_id for order_id in order_ids if order_id in held]

    def candidates(self, outcomes: Iterable[Outcome], after: str, limit: int) -> list[str]:
        """Order IDs with these outcomes, in ID order, after ``after`` (keyset paging)."""
        names = self._list([o.value for o in outcomes])
        return [str(r[0]) for r in self._fetch(self.sql.candidates, (names, after, limit))]

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
        if not dry:
            return self._claim(batch, run_id, force)
        ids = [order_id for order_id, _ in batch]
        known = self.existing(ids)
        fresh = self._first_sightings(ids)
        for order_id in ids:
            if order_id not in fresh:
                known[order_id] = ("", run_id, False)
        return decide_batch(batch, known, run_id, force)

    def _first_sightings(self, ids: Sequence[str]) -> set[str]:
        """The IDs not seen before in this dry run (a private temporary SQLite table, on disk:
        a dry run writes nothing to the ledger)."""
        if self._seen is None:
            self._seen = sqlite3.connect("", check_same_thread=False, isolation_level=None)
            self._seen.execute("PRAGMA temp_store=FILE")
            self._seen.execute("CREATE TEMP TABLE dry_seen (order_id TEXT PRIMARY KEY)")
        rows = self._seen.execute(
            "INSERT INTO temp.dry_seen SELECT value FROM json_each(?) WHERE true "
            "ON CONFLICT DO NOTHING RETURNING order_id",
            (json_param(list(ids)),),
        ).fetchall()
        return {r[0] for r in rows}

    def _forget_sightings(self) -> None:
        if self._seen is not None:
            self._seen.close()
            self._seen = None

    # -- reads --------------------------------------------------------------------------------

    def counts(self, outcome: str | None = None) -> tuple[dict[str, int], dict[str, int]]:
        """(outcome -> count, error_code -> count), optionally for one outcome."""
        if outcome:
            return (
                _counted(self._fetch(self.sql.outcomes_of, (outcome,))),
                _counted(self._fetch(self.sql.codes_of, (outcome,))),
            )
        return _counted(self._fetch(self.sql.outcomes)), _counted(self._fetch(self.sql.codes))

    def busiest_clean_second(self, within_s: float = 3600.0, newest: int = 20_000) -> float:
        """Requests in the busiest second one run of the ledger's newest attempts (of the last
        ``within_s``) sent without a 429 answering any of its requests in it: what the gateway
        has taken from one run, which a resumed run's pace may climb back to (runs sharing a
        ledger each count their own). 0.0 when nothing is known."""
        by_run: dict[object, list[Row]] = {}
        for sent_at, status, run_id in self._fetch(self.sql.recent_sends, (newest,)):
            by_run.setdefault(run_id, []).append((sent_at, status))
        since = time.time() - within_s
        return max((busiest_clean_second(rows, since) for rows in by_run.values()), default=0.0)

    def run_counts(self, run_id: str) -> tuple[dict[str, int], dict[str, int]]:
        """(outcome -> count, error_code -> count) of the orders one run holds: what it
        answered, what it found invalid, and what it claimed and left `pending`."""
        return (
            _counted(self._fetch(self.sql.run_outcomes, (run_id,))),
            _counted(self._fetch(self.sql.run_codes, (run_id,))),
        )

    def rows(self, outcome: str | None = None) -> Iterator[Row]:
        """Every order row in the CSV column order, by order ID; the message redacted of every
        known secret (every output path reads the orders here)."""
        if outcome:
            yield from redacted(self._stream(self.sql.rows_with, (outcome,)))
        else:
            yield from redacted(self._stream(self.sql.rows))

    def rows_of(self, order_ids: list[str]) -> Iterator[Row]:
        """The rows of these orders (those in the ledger), as ``rows`` gives them."""
        yield from redacted(self._fetch(self.sql.rows_of, (self._list(order_ids),)))

    def timeline(self) -> list[tuple[str, str, int]]:
        """(second as YYYY-MM-DDTHH:MM:SS, outcome, orders) for every answered order."""
        return [(str(s), str(o), int(str(n))) for s, o, n in self._fetch(self.sql.timeline)]


def decide_batch(
    batch: Sequence[tuple[str, Result | None]], known: Known, run_id: str, force: bool
) -> Plan:
    """A batch's plan on a ledger no other run writes: ``known`` is what the ledger holds of
    these IDs (updated as the batch is read, so a repeated ID is a duplicate)."""
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
    return plan


def _counted(rows: Iterable[Row]) -> dict[str, int]:
    return {str(key): int(str(n)) for key, n in rows}


def result_rows(results: Sequence[Result]) -> str:
    """Results as both ledgers' batch upserts read them: one JSON array of arrays (order_id,
    outcome, http_status, error_code, message, attempts). Arrays, not objects: orjson writes
    them ten times faster, holding the GIL, and the database reads a field by its place."""
    return json_param(
        [
            (r.order_id, r.outcome, r.http_status, r.error_code, r.message, r.attempts)
            for r in results
        ]
    )


def json_param(value: object) -> str:
    """JSON text for one batch parameter (orjson: dataclasses and enums natively, in C), every
    U+0000 in its strings replaced by U+FFFD: PostgreSQL's text and jsonb cannot hold it (one API
    message carrying it failed the whole batch's transaction, the other orders' outcomes with
    it), and SQLite's JSON functions cut the text there."""
    text = orjson.dumps(value).decode()
    return _NUL.sub(r"\1\\ufffd", text) if "\\u0000" in text else text


# A JSON escape of U+0000: a backslash that is not itself escaped, then u0000
_NUL = re.compile(r"(?<!\\)((?:\\\\)*)\\u0000")


def busiest_clean_second(sends: Iterable[Row], since: float) -> float:
    """The most requests answered other than 429 within one second that holds no 429, among
    ``sends`` ((sent at, http_status) rows, times in epoch seconds) sent after ``since``."""
    moments = []
    for at, status in sends:
        sent = float(at)  # type: ignore[arg-type]
        if sent >= since:
            moments.append((sent, status == 429, status is not None and status != 429))
    moments.sort()
    best = refused = taken = start = 0
    for at, was_refused, was_taken in moments:
        refused += was_refused
        taken += was_taken
        while at - moments[start][0] >= 1.0:
            refused -= moments[start][1]
            taken -= moments[start][2]
            start += 1
        if not refused:
            best = max(best, taken)
    return float(best)
