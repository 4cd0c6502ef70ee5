"""Sharing a ledger with other runs (PostgreSQL): this run's lease on the orders it claimed,
renewed while it lives, and the orders another live run holds, asked for again until that run
finishes them (skipped) or dies and its lease lapses (taken, looked up first)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import structlog

from worker.domain.errors import LedgerError
from worker.pipeline.feed import Feed
from worker.runtime.clock import Clock, first_of
from worker.settings import Settings
from worker.sinks.ledger import LedgerThread

log = structlog.get_logger(__name__)

BATCH = 1000  # IDs read, checked and claimed (marked pending) at a time
SHARED_BATCH = 100  # on a shared ledger: the most of 100 and half a second's worth at --rate
LAPSE = 3  # renewal periods without one: the lease (``claim_idle``) may have been lost


@dataclass
class Lease:
    """This run's lease as the run knows it: when it was last renewed, on the run's clock, and
    its term (``claim_idle``, which it wrote for the other runs to judge it by)."""

    term_s: float
    renewed_at: float

    def fresh(self, now: float) -> bool:
        """Renewed recently enough that no other run can have judged it lapsed (a third of
        the term kept as a margin)."""
        return now - self.renewed_at < self.term_s * 2 / 3


async def keep_lease(
    ledger: LedgerThread,
    run_id: str,
    feed: Feed,
    clock: Clock,
    lease: Lease | None = None,
    on_taken: Callable[[int], None] | None = None,
    on_gone: Callable[[str], None] | None = None,
) -> None:
    """Renew the run's lease until cancelled, on a thread and a connection of its own (a slow
    write of results never delays it); at once when the ledger has no leases (a file).

    A lease that lapsed (the process was frozen, or the database unreachable, for longer than
    ``claim_idle``) may have let another run take orders this one has queued: the queue is
    then checked against the ledger and keeps only the orders still this run's (a new epoch of
    the feed: the orders taken before it are checked again before their DELETE); ``on_taken``
    hears how many were another's.

    A database that refuses the renewal or the check is asked again at each turn; once it has
    refused every turn for the lease's whole term, ``on_gone`` hears why and the keeper ends
    (the run stops, exit 3: with every order left set aside, nothing else would meet the
    refusal, and the run would wait for a database that may never come back)."""
    every_s = ledger.ledger.lease_every_s
    if every_s is None:
        return
    refusals = _Refusals(clock, lease.term_s if lease is not None else every_s * LAPSE, on_gone)
    renewed = clock.monotonic()
    while True:
        try:
            await asyncio.to_thread(ledger.ledger.renew, run_id)
        except LedgerError as exc:  # tried again at the next turn; the writes will tell
            if refusals.given_up("lease_not_renewed", exc):
                return
            await clock.sleep(every_s)
            continue
        now = clock.monotonic()
        lapsed = now - renewed > every_s * LAPSE
        renewed = now
        queued = feed.lapse() if lapsed else list(feed.suspect)
        if lease is not None:  # after the lapse's new epoch, never before it
            lease.renewed_at = now
        if queued:  # what may have been taken is checked against the ledger
            try:
                await _check(ledger, run_id, feed, queued, on_taken)
            except LedgerError as exc:  # set aside still: checked again at the next turn
                if refusals.given_up("lease_check_failed", exc, queued=len(queued)):
                    return
                await clock.sleep(every_s)
                continue
        refusals.since = None
        # the next renewal, or at once when orders claimed before a lapse are set aside (the
        # workers wait for their check: the input may have ended meanwhile)
        await first_of(clock, every_s, feed.suspected.wait())


async def _check(
    ledger: LedgerThread,
    run_id: str,
    feed: Feed,
    queued: list[str],
    on_taken: Callable[[int], None] | None,
) -> None:
    """Keep in the feed the orders set aside that are still this run's."""
    mine = await ledger.ask(ledger.ledger.still_mine, queued, run_id)
    taken = len(queued) - len(mine)
    log.warning("lease_lapsed", queued=len(queued), taken_by_others=taken)
    feed.checked(queued, mine)
    if taken and on_taken is not None:
        on_taken(taken)


@dataclass
class _Refusals:
    """The database's refusals of the lease's turns, in a row."""

    clock: Clock
    term_s: float  # refused this long: the keeper gives up
    on_gone: Callable[[str], None] | None
    since: float | None = None  # the first refused turn of the row

    def given_up(self, event: str, exc: LedgerError, **fields: object) -> bool:
        """Log one refusal; True (``on_gone`` told why) once they have lasted the term."""
        now = self.clock.monotonic()
        self.since = now if self.since is None else self.since
        log.warning(event, error=str(exc), **fields)
        if self.on_gone is None or now - self.since < self.term_s:
            return False
        self.on_gone(
            f"the ledger has refused this run's lease for {now - self.since:.0f} s, its "
            f"whole term (--claim-idle): {exc}"
        )
        return True


class HeldByOthers:
    """Orders of the input that another live run holds."""

    def __init__(self, settings: Settings, clock: Clock, *, shared: bool) -> None:
        self._clock = clock
        self.ids: list[str] = []
        self._every_s = min(max(settings.claim_idle / 4, 0.2), 5.0)
        # IDs claimed at a time: on a shared ledger few are held ahead of the workers
        self.batch = min(BATCH, max(SHARED_BATCH, int(settings.rate / 2))) if shared else BATCH

    async def settle(
        self,
        claim: Callable[[list[str]], Awaitable[None]],
        stopping: Callable[[], bool],
    ) -> None:
        """Ask for the held orders again every ``every_s`` until none is held (``claim``
        applies each plan: what it holds still comes back into ``ids``)."""
        if self.ids:
            log.info("orders_held_by_other_runs", orders=len(self.ids))
        while self.ids and not stopping():
            await self._clock.sleep(self._every_s)
            ids, self.ids = self.ids, []
            for start in range(0, len(ids), self.batch):
                if stopping():
                    return
                await claim(ids[start : start + self.batch])
