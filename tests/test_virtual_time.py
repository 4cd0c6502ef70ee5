"""What waits on time, on a virtual clock (milliseconds of real time): the drain's grace, the
ledger sink's flusher, the lease's renewal, its lapse after a freeze, and the check before a
DELETE that an order is still the run's."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.fakes import FakeClock
from tests.support import mocked_api_settings
from worker.domain.errors import LedgerError
from worker.domain.models import Outcome, Result, RunOptions, RunSummary
from worker.ledger import SqliteLedger
from worker.pipeline.control import RunControl, watch_limits
from worker.pipeline.feed import Feed
from worker.pipeline.order import OrderState
from worker.pipeline.pool import drain
from worker.pipeline.tally import Tally
from worker.runtime.metrics import Metrics
from worker.sinks.ledger import FLUSH_DELAY_S, STALL_S, LedgerSink, LedgerThread
from worker.sources import IdValidator
from worker.sources.claimed import ClaimedInput
from worker.sources.lease import LAPSE, Lease, keep_lease
from worker.sources.plan import PlanSource


async def test_requests_in_flight_get_the_grace_then_are_cancelled() -> None:
    """A request answered within --grace is waited for; one that is not is cancelled when the
    grace is over, on the clock the run was given; a second signal cuts the grace short."""
    clock = FakeClock()
    control = RunControl()
    never = asyncio.get_running_loop().create_future()
    answered_at: list[float] = []

    async def answered_after(seconds: float) -> None:
        await clock.sleep(seconds)
        answered_at.append(clock.monotonic())

    async def hangs() -> None:
        await never

    start = clock.monotonic()
    quick = asyncio.ensure_future(answered_after(2))
    slow = asyncio.ensure_future(hangs())
    real = time.monotonic()
    await clock.run(asyncio.ensure_future(drain([quick, slow], control, 35.0, clock)))
    assert answered_at == [start + 2]
    assert slow.cancelled()
    assert clock.monotonic() - start == 35.0
    assert time.monotonic() - real < 5  # virtual seconds, not real ones

    hurried = RunControl()
    stuck = asyncio.ensure_future(hangs())
    draining = asyncio.ensure_future(drain([stuck], hurried, 35.0, clock))

    async def second_signal() -> None:
        await clock.sleep(3)
        hurried.hurry_event.set()

    before = clock.monotonic()
    await clock.run(draining, asyncio.ensure_future(second_signal()))
    assert stuck.cancelled()
    assert clock.monotonic() - before == 3.0


async def test_the_flusher_writes_a_result_at_most_the_delay_after_it_arrives(
    tmp_path: Path,
) -> None:
    """A result received is in the ledger FLUSH_DELAY_S later (virtual), not before the first
    tick, and the flusher's wait costs no real time."""
    clock = FakeClock()
    ledger = SqliteLedger(tmp_path / "l.sqlite")
    thread = LedgerThread(ledger)
    sink = LedgerSink(thread, "run1", Tally(RunSummary(), Metrics(), logged=False), clock)
    errors: list[str] = []
    flusher = asyncio.ensure_future(sink.run(errors.append))
    try:
        sink.add(Result("CDE0000000001", Outcome.CANCELLED, 200, None, None, 1))
        written_at: list[float] = []

        async def watch() -> None:
            while not list(ledger.rows()):
                await clock.sleep(FLUSH_DELAY_S / 10)
                await asyncio.to_thread(lambda: None)  # let the ledger thread commit
            written_at.append(clock.monotonic())

        start = clock.monotonic()
        await clock.run(asyncio.ensure_future(watch()))
        assert start + FLUSH_DELAY_S <= written_at[0] <= start + 2 * FLUSH_DELAY_S
        assert errors == []
    finally:
        flusher.cancel()
        await asyncio.gather(flusher, return_exceptions=True)
        thread.close()
        ledger.close()


async def test_a_write_the_ledger_has_not_taken_holds_every_request_until_it_has(
    tmp_path: Path,
) -> None:
    """The ledger takes a batch of results no sooner than its writer lets it (a database gone
    away, a file another program locks): once the write has waited STALL_S, the sink brakes
    the requests, again at each look until the write ends, then no more: the answers that
    could not be recorded stay those in flight, not all that the rate sends meanwhile."""

    written = threading.Event()

    class _Stuck(SqliteLedger):
        def record(self, *args: Any, **kwargs: Any) -> None:
            assert written.wait(10)
            super().record(*args, **kwargs)

    clock = FakeClock()
    ledger = _Stuck(tmp_path / "l.sqlite")
    thread = LedgerThread(ledger)
    sink = LedgerSink(thread, "run1", Tally(RunSummary(), Metrics(), logged=False), clock)
    brakes: list[tuple[float, float]] = []
    sink.brake(lambda seconds: brakes.append((clock.monotonic(), seconds)))
    flusher = asyncio.ensure_future(sink.run([].append))
    try:
        sink.add(Result("CDE0000000001", Outcome.CANCELLED, 200, None, None, 1))
        await _until(lambda: clock.sleepers == 1)  # the flusher's delay
        start = clock.monotonic()
        clock.advance(FLUSH_DELAY_S)
        await _until(lambda: clock.sleepers == 1)  # the write, watched
        clock.advance(STALL_S / 2)
        await _until(lambda: clock.sleepers == 1)
        assert brakes == []  # a write this short holds nothing
        for looks in (1, 2, 3):
            clock.advance(STALL_S / 2)
            await _until(lambda n=looks: len(brakes) == n and clock.sleepers == 1)
            clock.advance(STALL_S / 2)
        assert brakes == [(start + FLUSH_DELAY_S + n * STALL_S, STALL_S * 1.5) for n in (1, 2, 3)]
        written.set()
        await _until(lambda: bool(list(ledger.rows())) and clock.sleepers == 0)
        clock.advance(STALL_S * 3)
        for _ in range(20):
            await asyncio.sleep(0)
        assert len(brakes) == 3  # the write ended: no more
    finally:
        written.set()
        flusher.cancel()
        await asyncio.gather(flusher, return_exceptions=True)
        thread.close()
        ledger.close()


class _SharedLedger:
    """A shared ledger's lease as the keeper sees it: renewals, and which orders are still
    this run's (another run took ``taken``)."""

    lease_every_s = 10.0

    def __init__(self, taken: set[str]) -> None:
        self.taken = taken
        self.renewals = 0
        self.asked: list[str] = []

    def renew(self, _run_id: str) -> None:
        self.renewals += 1

    def still_mine(self, order_ids: list[str], _run_id: str) -> list[str]:
        self.asked.extend(order_ids)
        return [order_id for order_id in order_ids if order_id not in self.taken]


async def _until(done: Callable[[], bool]) -> None:
    """Until ``done()``: the keeper's calls run on threads, which the virtual clock does not
    drive (a condition awaited, with a deadline, never a fixed sleep)."""
    deadline = time.monotonic() + 10
    while not done():
        assert time.monotonic() < deadline, "the condition never came true"
        await asyncio.sleep(0.001)


async def _set_aside(shared: _SharedLedger, order_ids: list[str]) -> tuple[LedgerThread, Feed]:
    """The ledger's thread, and a feed whose orders were claimed before a lapse: set aside,
    to be checked."""
    thread = LedgerThread(shared)  # type: ignore[arg-type]  # the part of a Ledger it uses
    feed = Feed(low=100)
    feed.lapse()
    await feed.put(order_ids, epoch=0)
    return thread, feed


async def test_a_lease_lapsed_by_a_freeze_keeps_only_the_orders_still_ours() -> None:
    """The lease is renewed every lease_every_s of the clock; after a freeze longer than
    LAPSE renewals, the orders queued are checked against the ledger and those another run
    took meanwhile are dropped from the queue."""
    clock = FakeClock()
    shared = _SharedLedger(taken={"CDE0000000002"})
    thread = LedgerThread(shared)  # type: ignore[arg-type]  # the part of a Ledger it uses
    feed = Feed(low=100)
    await feed.put(["CDE0000000001", "CDE0000000002", "CDE0000000003"])
    keeper = asyncio.ensure_future(keep_lease(thread, "run1", feed, clock))
    every = shared.lease_every_s
    try:
        for renewed in range(1, 4):  # renewed on time: nothing is checked
            await _until(lambda n=renewed: shared.renewals == n and bool(clock.sleepers))
            clock.advance(every)
        await _until(lambda: shared.renewals == 4 and bool(clock.sleepers))
        assert feed.epoch == 0
        clock.now += every * (LAPSE + 1)  # the process was frozen
        clock.advance(every)
        await _until(lambda: feed.epoch == 1 and bool(clock.sleepers))
        queued = [await feed.get(), await feed.get()]
        assert queued == ["CDE0000000001", "CDE0000000003"]
    finally:
        keeper.cancel()
        await asyncio.gather(keeper, return_exceptions=True)
        thread.close()


async def test_orders_claimed_across_a_lapse_are_checked_and_sent_before_the_feed_ends() -> None:
    """A claim that was under way when the process froze comes back after the lapse: its
    orders are set aside to be checked. The producer then finds the input at its end and
    closes the feed; the workers still get the orders that are still ours (the keeper checks
    them at once, not at its next renewal), and nothing ends the feed before the check has."""
    clock = FakeClock()
    shared = _SharedLedger(taken={"CDE0000000002"})
    thread = LedgerThread(shared)  # type: ignore[arg-type]  # the part of a Ledger it uses
    feed = Feed(low=100)
    keeper = asyncio.ensure_future(keep_lease(thread, "run1", feed, clock))
    every = shared.lease_every_s
    try:
        await _until(lambda: shared.renewals == 1 and bool(clock.sleepers))
        epoch = feed.epoch  # the producer's claim begins, then the process freezes
        clock.now += every * (LAPSE + 1)
        clock.advance(every)
        await _until(lambda: feed.epoch == epoch + 1 and bool(clock.sleepers))
        renewed_at = clock.monotonic()
        await feed.put(["CDE0000000001", "CDE0000000002", "CDE0000000003"], epoch)
        feed.close()  # the last batch of the input
        taken = asyncio.ensure_future(_all(feed))
        await _until(taken.done)
        assert taken.result() == ["CDE0000000001", "CDE0000000003"]
        assert shared.asked == ["CDE0000000001", "CDE0000000002", "CDE0000000003"]
        assert clock.monotonic() == renewed_at  # checked at once
    finally:
        keeper.cancel()
        await asyncio.gather(keeper, return_exceptions=True)
        thread.close()


async def test_a_lease_that_cannot_be_renewed_is_tried_again_at_its_pace() -> None:
    """Orders set aside to be checked wake the keeper at once only once the lease is renewed:
    a database that refuses is asked again a renewal period later, not in a loop."""

    class _Refusing(_SharedLedger):
        def renew(self, _run_id: str) -> None:
            self.renewals += 1
            raise LedgerError("postgresql://db: connection refused")

    clock = FakeClock()
    shared = _Refusing(taken=set())
    thread, feed = await _set_aside(shared, ["CDE0000000001"])
    keeper = asyncio.ensure_future(keep_lease(thread, "run1", feed, clock))
    try:
        await _until(lambda: bool(clock.sleepers))
        for _ in range(20):
            await asyncio.sleep(0)
        assert shared.renewals == 1
        clock.advance(shared.lease_every_s)
        await _until(lambda: shared.renewals == 2 and bool(clock.sleepers))
        assert shared.asked == []
        assert feed.suspect == ["CDE0000000001"]
    finally:
        keeper.cancel()
        await asyncio.gather(keeper, return_exceptions=True)
        thread.close()


async def test_a_check_the_database_refuses_is_tried_again_at_its_pace() -> None:
    """The lease is renewed after a lapse, then the check of the orders set aside fails (the
    database went away again): the keeper goes on, the orders stay set aside (never sent
    unchecked), and the check is tried again a renewal period later, not in a loop."""

    class _CheckRefused(_SharedLedger):
        refusals = 1

        def still_mine(self, order_ids: list[str], run_id: str) -> list[str]:
            if self.refusals:
                self.refusals -= 1
                self.asked.extend(order_ids)
                raise LedgerError("postgresql://db: cannot read the ledger: connection refused")
            return super().still_mine(order_ids, run_id)

    clock = FakeClock()
    shared = _CheckRefused(taken={"CDE0000000002"})
    thread, feed = await _set_aside(shared, ["CDE0000000001", "CDE0000000002"])
    keeper = asyncio.ensure_future(keep_lease(thread, "run1", feed, clock))
    try:
        await _until(lambda: len(shared.asked) == 2 and bool(clock.sleepers))
        for _ in range(20):
            await asyncio.sleep(0)
        assert not keeper.done()
        assert (shared.renewals, len(shared.asked)) == (1, 2)  # not asked again in a loop
        assert feed.suspect == ["CDE0000000001", "CDE0000000002"]
        feed.close()
        taken = asyncio.ensure_future(_all(feed))
        clock.advance(shared.lease_every_s)
        await _until(taken.done)
        assert taken.result() == ["CDE0000000001"]
        assert shared.renewals == 2
    finally:
        keeper.cancel()
        await asyncio.gather(keeper, return_exceptions=True)
        thread.close()


async def test_a_database_that_refuses_the_lease_for_its_whole_term_stops_the_run() -> None:
    """The database refuses renewal after renewal (with every order left set aside after a
    lapse, nothing else would meet the refusal): the keeper gives up once the refusals have
    lasted the lease's whole term (the run stops, exit 3) instead of waiting for ever; a
    turn that succeeds in between starts the count again."""

    class _Gone(_SharedLedger):
        renewed = (False, False, True, False, False, False, False)  # turn by turn

        def renew(self, run_id: str) -> None:
            super().renew(run_id)
            if not self.renewed[self.renewals - 1]:
                raise LedgerError("postgresql://db: connection refused")

    clock = FakeClock()
    shared = _Gone(taken=set())
    thread, feed = await _set_aside(shared, ["CDE0000000001"])
    every = shared.lease_every_s
    gone: list[tuple[float, str]] = []
    keeper = asyncio.ensure_future(
        keep_lease(
            thread,
            "run1",
            feed,
            clock,
            Lease(every * LAPSE, clock.monotonic()),
            on_gone=lambda why: gone.append((clock.monotonic(), why)),
        )
    )
    try:
        start = clock.monotonic()
        # refused, refused, renewed (the order set aside checked), then refused four times
        for turn in range(1, 7):
            await _until(lambda n=turn: shared.renewals == n and bool(clock.sleepers))
            assert gone == []
            assert not keeper.done()
            clock.advance(every)
        await _until(keeper.done)
        assert keeper.result() is None
        assert shared.renewals == 7
        assert gone == [
            (
                start + 6 * every,
                "the ledger has refused this run's lease for 30 s, its whole term "
                "(--claim-idle): postgresql://db: connection refused",
            )
        ]
        assert shared.asked == ["CDE0000000001"]
    finally:
        keeper.cancel()
        await asyncio.gather(keeper, return_exceptions=True)
        thread.close()


async def test_a_stop_file_that_can_no_longer_be_checked_stops_the_run(tmp_path: Path) -> None:
    """--stop-file whose check starts failing mid-run (its folder made unreadable, a network
    file system gone): the brake cannot be read, so it counts as pulled: the run stops as at
    the file (exit 4, the same command resumes), saying why, at the next check."""

    class _Unreadable(type(tmp_path)):  # type: ignore[misc]  # the platform's Path class
        checks = 0

        def exists(self, **_kwargs: object) -> bool:
            type(self).checks += 1
            if type(self).checks > 3:
                raise PermissionError(13, "Permission denied")
            return False

    clock = FakeClock()
    control = RunControl()
    watcher = asyncio.ensure_future(
        watch_limits(control, None, _Unreadable(tmp_path / "STOP"), clock)
    )
    await clock.run(watcher)
    assert control.exit_code == 4
    assert control.reason == (
        f"the stop file {tmp_path / 'STOP'} can no longer be checked (Permission denied)"
    )
    assert clock.now == 1003.0  # three checks a second apart found nothing; the fourth failed


async def _all(feed: Feed) -> list[str]:
    """Every ID the feed gives until it ends."""
    taken = []
    while (order_id := await feed.get()) is not None:
        taken.append(order_id)
    return taken


async def test_an_order_is_confirmed_ours_before_its_delete_once_the_lease_may_have_lapsed(
    tmp_path: Path,
) -> None:
    """On a shared ledger, right before each DELETE: while the lease is fresh and the order was
    taken in the feed's current epoch, no question is asked; once the lease is older than two
    thirds of its term (a freeze), or the order was taken before a lapse, the ledger is asked,
    and an order another run took is not sent (its row is that run's to write)."""
    clock = FakeClock()
    shared = _SharedLedger(taken={"CDE0000000002"})
    thread = LedgerThread(shared)  # type: ignore[arg-type]  # the part of a Ledger it uses
    settings = mocked_api_settings(tmp_path, claim_idle=30)
    summary = RunSummary()
    sink = LedgerSink(None, "run1", None)
    claimed = ClaimedInput(
        settings, PlanSource([], "none", IdValidator(settings.id_pattern)), thread, "run1",
        RunOptions(), RunControl(), sink, summary, clock,
    )  # fmt: skip
    still_mine = claimed.ownership()
    assert still_mine is not None
    try:
        mine = OrderState("CDE0000000001", handle="0")
        taken = OrderState("CDE0000000002", handle="0")
        assert await still_mine(mine)
        assert await still_mine(taken)  # a fresh lease: nobody can have taken it
        assert shared.asked == []
        clock.now += 21  # frozen past two thirds of the 30 s term
        assert await still_mine(mine)
        assert not await still_mine(taken)
        assert shared.asked == ["CDE0000000001", "CDE0000000002"]
        lost = OrderState("CDE0000000002", handle="0", lost=True)
        await sink.record(lost, lost.result(Outcome.PENDING, "not sent"))
        assert summary.answered == 0
    finally:
        thread.close()


def test_a_file_ledger_needs_no_check_before_a_delete(tmp_path: Path) -> None:
    """A ledger file is locked by the run: nothing else can take its orders, no check."""
    ledger = SqliteLedger(tmp_path / "l.sqlite")
    thread = LedgerThread(ledger)
    settings = mocked_api_settings(tmp_path)
    try:
        claimed = ClaimedInput(
            settings, PlanSource([], "none", IdValidator(settings.id_pattern)), thread, "run1",
            RunOptions(), RunControl(), LedgerSink(None, "run1", None), RunSummary(),
            FakeClock(),
        )  # fmt: skip
        assert claimed.ownership() is None
    finally:
        thread.close()
        ledger.close()


async def test_a_ledger_that_cannot_confirm_stops_the_run(tmp_path: Path) -> None:
    """The lease may have lapsed and the ledger cannot be asked (the database is unreachable):
    the order is not sent and the run stops, naming why."""

    class _Unreachable(_SharedLedger):
        def still_mine(self, order_ids: list[str], _run_id: str) -> list[str]:
            raise LedgerError("postgresql://db: cannot read the ledger: connection refused")

    clock = FakeClock()
    shared = _Unreachable(taken=set())
    thread = LedgerThread(shared)  # type: ignore[arg-type]  # the part of a Ledger it uses
    settings = mocked_api_settings(tmp_path, claim_idle=30)
    control = RunControl()
    claimed = ClaimedInput(
        settings, PlanSource([], "none", IdValidator(settings.id_pattern)), thread, "run1",
        RunOptions(), control, LedgerSink(None, "run1", None), RunSummary(), clock,
    )  # fmt: skip
    still_mine = claimed.ownership()
    assert still_mine is not None
    try:
        clock.now += 21
        assert not await still_mine(OrderState("CDE0000000001", handle="0"))
        assert control.stopping
        assert "cannot confirm" in (control.reason or "")
    finally:
        thread.close()
