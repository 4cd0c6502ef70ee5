"""The input claimed in the ledger: the pool's source for `run`, `retry`, `run --select` and
`apply`.

The input's IDs are read in batches (off the event loop), each batch claimed in the ledger
(marked `pending` under this run, or found final, a duplicate, invalid, or held by another live
run) and what is to be sent fed to the workers: the orders no earlier run tried first, those
earlier runs tried and left (`retryable_failed`, `pending` after a request) once the whole input
is claimed, so that the guardrails judge the run by its own orders first (a resume does not
begin with the failures of the run before). An order an earlier run may have sent is looked
up before it is sent again. On a shared ledger the run's lease is kept while it sends, and the
orders another live run holds are asked for again until that run finishes them or dies.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from typing import Any

import structlog

from worker.domain.errors import LedgerError, WorkerError
from worker.domain.models import RunOptions, RunSummary
from worker.pipeline.control import RunControl
from worker.pipeline.feed import Feed
from worker.pipeline.order import OrderState
from worker.pipeline.pool import check_failure_rate
from worker.runtime.clock import Clock
from worker.settings import Settings
from worker.sinks.ledger import LedgerSink, LedgerThread
from worker.sources import Batch, OrderInput
from worker.sources.lease import HeldByOthers, Lease, keep_lease

log = structlog.get_logger(__name__)

FIRST_INVALID = 5  # where the first invalid IDs are, for the dry run's summary


class ClaimedInput:
    """An input of IDs, claimed in the ledger batch by batch, as the pool's source."""

    def __init__(
        self,
        settings: Settings,
        source: OrderInput,
        ledger: LedgerThread,
        run_id: str,
        options: RunOptions,
        control: RunControl,
        sink: LedgerSink,
        summary: RunSummary,
        clock: Clock,
    ) -> None:
        self._clock = clock  # the lease's renewals and the asks for held orders run on it
        self._settings = settings
        self._source = source
        self._ledger = ledger
        self._run_id = run_id
        self._options = options
        self._control = control
        self._sink = sink  # where invalid IDs are recorded
        self._summary = summary
        self.skipped: dict[str, int] = {}  # outcome -> orders found final, not sent again
        self._uncertain: set[str] = set()  # queued orders an earlier run may have sent
        # claimed orders earlier runs tried, by the epoch of their claim: sent after the input
        self._tried: list[tuple[int, list[str]]] = []
        # held back until the input is claimed (not by `retry`: it sends only such orders)
        self._hold_tried = options.command != "retry"
        self._claimed = 0  # orders claimed to be sent (held to options.approved)
        self._feed = Feed(low=settings.concurrency)
        shared = ledger.ledger.lease_every_s is not None
        self._held = HeldByOthers(settings, clock, shared=shared)
        # a shared ledger's lease: an order is confirmed still this run's before its DELETE
        # when the lease may have lapsed since it was taken
        self._lease = Lease(settings.claim_idle, clock.monotonic()) if shared else None

    # -- the pool's source --------------------------------------------------------------------

    def helpers(self) -> list[Coroutine[Any, Any, None]]:
        """The producer."""
        return [self.produce(self._feed)]

    def keepers(self) -> list[Coroutine[Any, Any, None]]:
        """The run's lease on the orders it claimed (a shared ledger's)."""
        return [
            keep_lease(
                self._ledger,
                self._run_id,
                self._feed,
                self._clock,
                self._lease,
                self._taken,
                self._control.abort,
            )
        ]

    def _taken(self, orders: int) -> None:
        """Orders this run had queued that another took after its lease lapsed."""
        self._summary.taken_elsewhere += orders

    def ownership(self) -> Callable[[OrderState], Awaitable[bool | None]] | None:
        """On a shared ledger, the check before each DELETE; None on a file this run holds
        locked (nothing else can take its orders)."""
        return None if self._lease is None else self._still_mine

    async def _still_mine(self, state: OrderState) -> bool | None:
        """Still this run's: at no cost while the lease is fresh and the order was taken in
        its current epoch; else asked of the ledger (the process was frozen, or the database
        unreachable: another run may have judged the lease lapsed and taken the order)."""
        lease = self._lease
        assert lease is not None
        if lease.fresh(self._clock.monotonic()) and state.handle == str(self._feed.epoch):
            return True
        try:
            mine = await self._ledger.ask(
                self._ledger.ledger.still_mine, [state.order_id], self._run_id
            )
        except LedgerError as exc:  # nothing it sends now could be recorded either
            self._control.abort(f"the ledger cannot confirm an order is still this run's: {exc}")
            return None  # not sent, and not another run's that we know of
        if mine:
            state.handle = str(self._feed.epoch)  # confirmed in this epoch
        return bool(mine)

    def left(self) -> int | None:
        """The claimed orders not yet taken, once the whole input is claimed."""
        return self._feed.left()

    async def take(self) -> OrderState | None:
        """The next claimed order; one an earlier run may have sent is looked up first."""
        order_id = await self._feed.get()
        if order_id is None:
            return None
        uncertain = order_id in self._uncertain
        if uncertain:
            self._uncertain.discard(order_id)
        return OrderState(order_id, verify=uncertain, handle=str(self._feed.epoch))

    # -- reading and claiming -----------------------------------------------------------------

    async def produce(self, feed: Feed | None) -> None:
        """Read, validate and claim the input in batches; feed the workers (none in a dry run)."""
        try:
            await self._read_input(feed)
        except WorkerError as exc:
            self._control.abort(str(exc))
        except Exception as exc:  # a bug must stop the run, never hang it
            log.exception("producer_failed")
            self._control.abort(f"internal error while reading the input: {exc!r}")
        finally:
            if feed is not None:
                feed.close()

    async def _read_input(self, feed: Feed | None) -> None:
        batches = self._source.batches(self._held.batch)
        while not self._control.stopping:
            batch = await asyncio.to_thread(_next_batch, batches)
            if batch is None:
                break
            self._summary.read += len(batch)
            await self._claim(batch, feed)
        self._hold_tried = False
        tried, self._tried = self._tried, []
        for epoch, order_ids in tried:
            if feed is None or self._control.stopping:
                break  # claimed, never sent: `pending` under this run
            await feed.put(order_ids, epoch)
        await self._held.settle(
            lambda ids: self._claim([(order_id, None) for order_id in ids], feed),
            lambda: self._control.stopping,
        )

    async def _claim(self, batch: Batch, feed: Feed | None) -> None:
        """Claim a batch in the ledger; feed what is to be sent."""
        epoch = self._feed.epoch  # a lease lapsing meanwhile sets the claimed ones aside
        plan = await self._ledger.call(
            self._ledger.ledger.claim,
            batch,
            self._run_id,
            force=self._options.force,
            dry=self._options.dry_run,
        )
        summary = self._summary
        self._held.ids += plan.held
        summary.duplicates += plan.duplicates
        if plan.failed_elsewhere:
            summary.failed_elsewhere += len(plan.failed_elsewhere)
            log.warning(
                "orders_failed_in_another_run",
                orders=len(plan.failed_elsewhere),
                first=plan.failed_elsewhere[0],
            )
        summary.skipped_final += len(plan.skipped)
        for outcome in plan.skipped:
            self.skipped[outcome] = self.skipped.get(outcome, 0) + 1
        self._uncertain |= plan.uncertain
        if self._beyond_approval(len(plan.to_send)):
            return
        for result in plan.invalid:
            self._sink.add(result)
            if len(summary.first_invalid) < FIRST_INVALID and result.message:
                summary.first_invalid.append(result.message.split(": ", 1)[0])
        if plan.invalid:
            check_failure_rate(self._settings, summary, self._control)
        if feed is None:
            summary.sent_requests += len(plan.to_send)
            return
        to_send = plan.to_send
        if plan.uncertain and self._hold_tried:
            self._tried.append((epoch, [i for i in to_send if i in plan.uncertain]))
            to_send = [order_id for order_id in to_send if order_id not in plan.uncertain]
        await feed.put(to_send, epoch)

    def _beyond_approval(self, more: int) -> bool:
        """What was confirmed and capped is what is sent: claimed orders beyond the approved
        count (the input changed after it was counted) stop the run before any is sent."""
        approved = self._options.approved
        if approved is None or self._options.dry_run:
            return False
        self._claimed += more
        if self._claimed <= approved:
            return False
        self._control.stop_by_limit(
            f"the input holds more orders to send than the {approved} counted before sending "
            "(it changed after it was counted, or --max-orders): the rest were not sent; check "
            "it, then run the same command again"
        )
        return True


def _next_batch(batches: Iterator[Batch]) -> Batch | None:
    return next(batches, None)
