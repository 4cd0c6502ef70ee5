"""The PostgreSQL ledger: the ledger's tables and behaviour in a database that several
runs share at once, on several hosts.

Each run holds a lease: its ``runs.heartbeat_at``, renewed every third of its ``claim_idle``
while it lives, and its term ``runs.lease_s`` (its ``claim_idle``), which every other run judges
it by, whatever its own setting. An order `pending` under a run whose lease is fresh is that
run's: another run given it leaves it (``Plan.held``) and asks again later; once the lease is
older than its term (the run died), the next claim takes the order and looks it up before
sending it again. A claim
is one transaction that locks the rows it decides (``FOR UPDATE SKIP LOCKED``: a row another
claim is deciding is left as held, never waited for)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from typing import Any

import psycopg

from worker.domain.location import PostgresUrl
from worker.domain.models import Result, RunRecord
from worker.ledger.base import Ledger, json_param, result_rows
from worker.ledger.leases import alive, decide, process_prefix
from worker.ledger.pg_sql import (
    ATTEMPTS,
    BEGIN_RUN,
    GONE_HERE,
    INSERT_NEW,
    LOCK_HELD,
    OUTCOMES_OF,
    PUBLISH,
    STATEMENTS,
    TAKE,
    UPSERT,
)
from worker.ledger.plan import Plan
from worker.ledger.postgres import PgDb
from worker.ledger.schema import FINAL_VALUES
from worker.ledger.statements import Attempts, Row
from worker.runtime.clock import now_iso


class PgLedger(Ledger):
    """The ledger in PostgreSQL (thread-safe: each call takes a connection of the pool)."""

    sql = STATEMENTS
    path: PostgresUrl

    def __init__(
        self,
        url: PostgresUrl,
        *,
        readonly: bool = False,
        claim_idle: float = 60.0,
        db: PgDb | None = None,
    ) -> None:
        self.path = url
        self.readonly = readonly
        self.claim_idle = claim_idle
        self._pg = db or PgDb(url)  # the pool a caller already opened, when given
        try:
            self._pg.prepare(readonly=readonly)
        except BaseException:
            self._pg.close()
            raise

    @property
    def lease_every_s(self) -> float | None:
        """How often a run renews its lease."""
        return max(self.claim_idle / 3, 0.1)

    def close(self) -> None:
        """Close the pool."""
        self._pg.close()
        self._forget_sightings()

    # -- runs ---------------------------------------------------------------------------------

    def begin_run(
        self, run_id: str, command: str, base_url: str, who: RunRecord | None = None
    ) -> None:
        """Note the start of a run, its lease taken; end the leases of the runs of this
        machine whose process is gone (a `kill -9`: the same command again resumes at once)."""
        who = who or RunRecord()
        values = (run_id, command, base_url, now_iso(), who.operator, who.host, who.reason)
        here = process_prefix()
        process = f"{here}{os.getpid()}"

        def begin(conn: psycopg.Connection[Any]) -> None:
            details = json.dumps(who.details)
            conn.execute(BEGIN_RUN, (*values, who.ticket, details, process, self.claim_idle))
            gone = [
                other
                for other, process in conn.execute(GONE_HERE, (here, run_id))
                if not alive(int(process[len(here) :]))
            ]
            if gone:
                conn.execute("UPDATE runs SET heartbeat_at = NULL WHERE run_id = ANY(%s)", (gone,))

        self._pg.run(begin)

    def renew(self, run_id: str) -> None:
        """Renew this run's lease on the orders it holds."""
        self._pg.run(
            lambda conn: conn.execute(
                "UPDATE runs SET heartbeat_at = now() WHERE run_id = %s", (run_id,)
            )
        )

    # -- input --------------------------------------------------------------------------------

    def _claim(self, batch: Sequence[tuple[str, Result | None]], run_id: str, force: bool) -> Plan:
        """A claim in one transaction; an order another live run holds is left to it."""
        stamp = now_iso()  # a claim tried again knows its own rows by it
        return self._pg.run(lambda conn: self._claim_in(conn, batch, run_id, force, stamp))

    def _claim_in(
        self,
        conn: psycopg.Connection[Any],
        batch: Sequence[tuple[str, Result | None]],
        run_id: str,
        force: bool,
        stamp: str,
    ) -> Plan:
        valid = sorted({order_id for order_id, invalid in batch if invalid is None})
        fresh = {
            row[0] for row in conn.execute(INSERT_NEW, (run_id, stamp, stamp, self._list(valid)))
        }
        rest = [order_id for order_id, _ in batch if order_id not in fresh]
        args = {"ids": self._list(rest), "run": run_id, "force": force, "idle": self.claim_idle}
        locked = {row[0]: row[1:] for row in conn.execute(LOCK_HELD, args)} if rest else {}
        missing = [order_id for order_id in rest if order_id not in locked]
        final: dict[str, str] = {
            order_id: outcome
            for order_id, outcome in (
                conn.execute(OUTCOMES_OF, (self._list(missing),)) if missing else ()
            )
            if outcome in FINAL_VALUES
        }
        plan = Plan()
        seen: set[str] = set()
        for order_id, invalid in batch:
            if order_id in seen:
                plan.duplicates += 1
            elif order_id in fresh:
                plan.to_send.append(order_id)
            else:
                decide(plan, order_id, invalid, locked.get(order_id), final, run_id, stamp, force)
            seen.add(order_id)
        taken = [order_id for order_id in plan.to_send if order_id not in fresh]
        if taken:  # marked `pending` under this run: another live run leaves them to it
            conn.execute(TAKE, (run_id, stamp, self._list(taken)))
        if plan.invalid:
            conn.execute(UPSERT, {"rows": result_rows(plan.invalid), "run": run_id, "at": stamp})
        return plan

    # -- results ------------------------------------------------------------------------------

    def record(self, results: Sequence[Result], run_id: str, attempts: Attempts = ()) -> None:
        """Upsert a batch of results and append their attempts in one transaction."""
        if not (results or attempts):
            return
        tried = json_param(attempts) if attempts else None
        rows = result_rows(results) if results else None

        def write(conn: psycopg.Connection[Any]) -> None:
            if tried is not None:
                conn.execute(ATTEMPTS, (tried,))
            if rows is not None:
                conn.execute(UPSERT, {"rows": rows, "run": run_id, "at": now_iso()})

        self._pg.run(write)

    def publish(self, run_id: str, status: dict[str, object]) -> None:
        """This run's status, for `control status`."""
        self._pg.run(lambda conn: conn.execute(PUBLISH, (run_id, json.dumps(status), now_iso())))

    # -- plumbing -----------------------------------------------------------------------------

    def _list(self, values: Sequence[str]) -> object:
        return json_param(list(values))  # read by any_of()

    def _fetch(self, sql: str, args: Sequence[object] = ()) -> list[Row]:
        return self._pg.fetch(sql, args)

    def _stream(self, sql: str, args: Sequence[object] = ()) -> Iterator[Row]:
        return self._pg.stream(sql, args)

    def _change(self, sql: str, args: Sequence[object]) -> int:
        return int(self._pg.run(lambda conn: conn.execute(sql, args).rowcount))
