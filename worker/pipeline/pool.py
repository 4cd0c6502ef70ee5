"""The worker pool every sending command runs: orders from a source, ``concurrency`` workers
through one dispatcher, their results to a sink, and the two-phase stop.

`run`, `retry` and `run --select` take their orders from the input through the ledger and
record to the ledger; `consume` takes entries from a Redis stream and records to the results
stream. Each is a Source and a Sink; the pool does the rest, once: the dispatcher and its
circuit breaker, progress, the deadline and stop-file watcher, a task that dies stopping the
run, and the shutdown. On a signal, a fatal answer or a limit nothing new starts, workers with
no request in flight stop at once, requests in flight get ``grace`` seconds to be answered and
recorded, then the rest are cancelled and stay `pending`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import structlog

from worker.api.connection import ApiConnection, connect
from worker.api.limiter import RateLimiter
from worker.domain.classifier import OutcomeTable
from worker.domain.models import SUCCESS, Outcome, Result, RunSummary
from worker.domain.retry import RetryPolicy
from worker.pipeline.breaker import CircuitBreaker
from worker.pipeline.canary import Canary
from worker.pipeline.control import RunControl, limits_watcher
from worker.pipeline.dispatcher import Dispatcher
from worker.pipeline.order import OrderState
from worker.pipeline.ports import Sink, Source
from worker.pipeline.progress import ProgressReporter
from worker.pipeline.shelf import OrderPicker, RetryShelf
from worker.pipeline.steering import ControlChannel, Steering
from worker.runtime.clock import Clock, first_of, now_iso
from worker.runtime.loop import cancel_all
from worker.runtime.metrics import Metrics
from worker.settings import Settings

log = structlog.get_logger(__name__)

SLOW_S = 10.0  # a request on the wire this long is named on the progress line


@dataclass
class Lane:
    """One worker: its task, the order it works on, and whether it is recording a result."""

    task: asyncio.Future[None] | None = None
    state: OrderState | None = None
    finishing: bool = False

    @property
    def sending(self) -> bool:
        """A request is on the wire, or its answer is being recorded: the stop waits for it."""
        return self.finishing or (self.state is not None and self.state.in_flight)


class Pool:
    """The dispatcher, its breaker and ``concurrency`` workers between a source and a sink."""

    def __init__(
        self,
        settings: Settings,
        api: ApiConnection,
        table: OutcomeTable,
        control: RunControl,
        clock: Clock,
        metrics: Metrics,
        summary: RunSummary,
        *,
        still_mine: Callable[[OrderState], Awaitable[bool | None]] | None = None,
        ask: Callable[[list[Result]], bool] | None = None,
        predict: bool = False,
    ) -> None:
        self._settings = s = settings
        self.control = control
        self._clock = clock
        self._summary = summary
        self.canary = Canary(s.canary, control, ask)
        self.limiter = api.limiter
        self.breaker = CircuitBreaker.for_workers(
            clock, outage_timeout_s=s.outage_timeout, workers=s.concurrency
        )
        self.breaker.on_state = metrics.circuit_changed
        self.dispatcher = Dispatcher(
            client=api.client,
            tokens=api.tokens,
            limiter=api.limiter,
            table=table,
            policy=RetryPolicy(s.max_attempts, s.max_wait, api.backoff),
            control=control,
            clock=clock,
            breaker=self.breaker,
            still_mine=still_mine,
            metrics=metrics,
            required=s.required_statuses,
            predict=predict,
        )
        self.orders = OrderPicker(
            RetryShelf(clock), lambda: control.stopping, lambda: self.limiter.pace_per_s
        )
        self._after_canary: list[OrderState] = []  # tried by an earlier run: after the canary

    async def run(
        self,
        source: Source,
        sink: Sink,
        progress: ProgressReporter,
        channel: ControlChannel | None = None,
    ) -> None:
        """Work until the source runs dry or the run stops; the source's keepers (keeping what
        it holds its own) run until the requests in flight are drained; ``channel`` steers the
        run (`cancel-orders control`)."""
        control = self.control
        self.dispatcher.on_attempt = sink.attempt
        sink.brake(self.limiter.brake)
        self.dispatcher.may_shelve = lambda: (
            self.canary.passed
        )  # a canary order waits in its worker
        lanes = [Lane() for _ in range(self._settings.concurrency)]
        steering = None
        if channel is not None:
            status = partial(self._status, progress, lanes)
            ceiling = self._settings.rate_ceiling
            steering = Steering(channel, self.limiter, control, status, ceiling, self._clock)
            await steering.step()  # before anything is read or sent
        progress.stage = partial(self._screen_stage, lanes)
        helpers = self._helpers(source, progress, steering)
        kept = [self._spawn(c) for c in source.keepers()]
        for lane in lanes:
            lane.task = self._spawn(self._work(source, sink, lane))
        workers = [lane.task for lane in lanes if lane.task is not None]
        stop = asyncio.ensure_future(control.stop_event.wait())
        # return_exceptions: a worker that dies stops the run (task_ended), never the wait
        # for the others, whose requests in flight are drained before the session closes.
        everything = asyncio.gather(*workers, return_exceptions=True)
        try:
            waits: set[asyncio.Future[Any]] = {stop, everything}
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            if control.stopping:
                for task in helpers:
                    task.cancel()
                for lane in lanes:
                    if lane.task is not None and not lane.sending:
                        lane.task.cancel()
                busy = [w for w in workers if not w.done()]
                if busy:
                    await drain(busy, control, self._settings.grace, self._clock)
        finally:
            await cancel_all([stop, *helpers])
            await asyncio.gather(everything, return_exceptions=True)
            self._unshelve(sink)
            await cancel_all(kept)

    def _helpers(
        self, source: Source, progress: ProgressReporter, steering: Steering | None
    ) -> list[asyncio.Future[None]]:
        """The source's tasks, progress, steering, and the deadline and stop-file watcher."""
        helpers = [] if self.control.stopping else [self._spawn(c) for c in source.helpers()]
        helpers.append(self._spawn(progress.run()))
        if steering is not None:
            helpers.append(self._spawn(steering.run()))
        watcher = limits_watcher(self._settings, self.control, self._clock)
        if watcher is not None:
            helpers.append(self._spawn(watcher))
        return helpers

    async def _rarely(
        self, state: OrderState | None, source: Source, canary: bool
    ) -> OrderState | bool | None:
        """What a worker does with what it took when the source ran dry, it holds a canary
        slot, or the run stops: the order to send; True: look again (its canary slot went to
        the next order, or the canary's verdict let the orders that waited for it go); None:
        the worker ends."""
        orders = self.orders
        if state is None and orders.straight_from_source:
            orders.source_ran_dry()
            state = await orders.next(source)
        control = self.control
        if canary and state is not None and state.verify and not control.stopping:
            # an order an earlier run tried is no canary order: it waits for the verdict, and
            # the slot goes to the next order
            self._after_canary.append(state)
            self.canary.give_back()
            return True
        if state is not None and not control.stopping:
            return state
        if canary:
            await self.canary.not_taken()
            if self._after_canary and not control.stopping:
                await self.canary.verdict()  # what waits for it is this worker's too
                self._release_after_canary()
                return True
        return None

    def _release_after_canary(self) -> None:
        """The canary passed: the orders earlier runs tried, set aside meanwhile, go next (on
        the shelf, before fresh orders)."""
        if self.canary.passed and self._after_canary:
            for state in self._after_canary:
                self.orders.shelf.put(state, 0.0)
            self._after_canary.clear()

    def _unshelve(self, sink: Sink) -> None:
        """The run is over: what waits on the shelf (or was taken and not started, or waits for
        the canary's verdict) stays `pending`, recorded as an order stopped before its answer
        is."""
        for state, why in self.orders.leftovers():
            sink.interrupted(state, state.result(Outcome.PENDING, why))
        for state in self._after_canary:
            sink.interrupted(state, state.result(Outcome.PENDING, "not sent: the canary stopped"))
        self._after_canary.clear()

    def _stage(self) -> str:
        """What the run is doing now, in words: the waits first, so that none looks like a
        hang."""
        now = self._clock.monotonic()
        limiter, breaker = self.limiter, self.breaker
        if self.control.stopping:
            return "stopping"
        if limiter.held:
            return "paused (control)"
        if breaker.is_open:
            return f"API outage for {breaker.outage_s():.0f} s: probing"
        if limiter.braked_until > now:
            return "waiting for the ledger to record the answers"
        if limiter.paused_until > now:
            return f"waiting {limiter.paused_until - now:.0f} s (Retry-After)"
        if not self.canary.passed and self.canary.size:
            return f"canary of {self.canary.size} orders"
        return "sending"

    def _screen_stage(self, lanes: list[Lane]) -> str:
        """The stage as the progress line shows it, with what a person would otherwise take for
        a hang: the canary's count, requests slow to answer, the learned limit when under
        --rate. Empty while the run simply sends."""
        stage = self._stage()
        canary = self.canary
        if stage.startswith("canary"):
            stage = f"canary {canary.answered}/{canary.size}"
        parts = [] if stage == "sending" else [stage]
        now = self._clock.monotonic()
        slow = sum(
            1
            for lane in lanes
            if lane.state is not None and lane.state.in_flight and now - lane.state.slot > SLOW_S
        )
        if slow:
            parts.append(f"{slow} waiting over {SLOW_S:.0f} s")
        limiter = self.limiter
        if limiter.pace_per_s < limiter.rate_per_s:
            parts.append(f"limit {limiter.pace_per_s:.0f}/s")
        return ", ".join(parts)

    def _status(self, progress: ProgressReporter, lanes: list[Lane]) -> dict[str, Any]:
        """What `control status` shows of this run: the progress line's stage."""
        return {
            "stage": self._screen_stage(lanes) or "sending",
            "done": progress.done(),
            "total": progress.total,
            "outcomes": dict(self._summary.outcomes),
            "requests": self.control.requests,
            "rate": round(self.limiter.pace_per_s, 3),
            "configured_rate": self.limiter.rate_per_s,
            "max_rate": self._settings.rate_ceiling,  # the most `control rate` may set
            "stopping": self.control.stopping,
            "updated_at": now_iso(),
        }

    def _spawn(self, coro: Awaitable[None]) -> asyncio.Future[None]:
        task = asyncio.ensure_future(coro)
        task.add_done_callback(self.control.task_ended)  # a task that dies stops the run
        return task

    async def _work(self, source: Source, sink: Sink, lane: Lane) -> None:
        control = self.control
        while not control.stopping:
            lane.state = None
            # the other workers answered in this turn go first: the next requests leave together
            # (docs/development.md, "The hot path")
            await asyncio.sleep(0)
            # the first N go alone, the others wait for their verdict (no call once it passed)
            canary = not self.canary.passed and await self.canary.admit()
            orders = self.orders
            # nothing waits for a retry: straight from the source
            state = await (source.take() if orders.straight_from_source else orders.next(source))
            if state is None or canary or control.stopping:  # the rare paths, apart
                taken = await self._rarely(state, source, canary)
                if taken is None:
                    return
                if isinstance(taken, bool):  # look again
                    continue
                state = taken
            lane.state = state
            try:
                result = await self.dispatcher.process(state)
                if result is None:  # its backoff: a timer on the shelf, not this worker
                    self.orders.shelf.put(state, state.due_in or 0.0)
                    state.due_in = None
                    state.resumed = True
                    continue
            except asyncio.CancelledError:
                sink.interrupted(
                    state, state.result(Outcome.PENDING, "interrupted before an answer")
                )
                raise
            except Exception as exc:  # a bug must stop the run, never lose the order
                log.exception("worker_failed", order_id=state.order_id)
                sink.interrupted(state, state.result(Outcome.PENDING, "internal error"))
                control.abort(f"internal error while sending: {exc!r}")
                return
            lane.finishing = True
            try:
                await sink.record(state, result)
            finally:
                lane.finishing = False
            if result.outcome not in SUCCESS:
                check_failure_rate(self._settings, self._summary, control)
            if canary:
                await self.canary.done(result)
                self._release_after_canary()


@dataclass(frozen=True)
class PoolStats:
    """What a run's summary tells of its pool once it is over."""

    paused_s: float  # paused by the gateway (429 / quota Retry-After)
    lowest_rate: float | None  # the lowest pace the limiter learned, when under --rate
    outage_s: float  # the API down (the breaker open)


async def send_through_pool(
    settings: Settings,
    source: Source,
    sink: Sink,
    progress: ProgressReporter,
    run: RunParts,
    *,
    limiter: RateLimiter | None = None,
    ask: Callable[[list[Result]], bool] | None = None,
    channel: ControlChannel | None = None,
    predict: bool = False,
    taken: float = 0.0,
) -> PoolStats:
    """Connect to the API, run a pool between ``source`` and ``sink`` until the source is dry
    or the run stops, close the connection: the one place a pool is built, for every command
    that sends or predicts (``limiter``: a group's shared one; ``predict``: `check`, a GET
    for each order and no DELETE; ``taken``: the busiest second the gateway took without a
    429 in the ledger's memory, as high as the pace may climb back after 429s)."""
    api = connect(settings, run.clock, limiter, run.metrics)
    api.limiter.clean_best = max(api.limiter.clean_best, taken)
    try:
        pool = Pool(
            settings,
            api,
            run.table,
            run.control,
            run.clock,
            run.metrics,
            run.summary,
            still_mine=source.ownership(),
            ask=ask,
            predict=predict,
        )
        await pool.run(source, sink, progress, channel)
    finally:
        await api.close()
    limiter_used, breaker = pool.limiter, pool.breaker
    lowest = limiter_used.lowest_pace_per_s
    return PoolStats(
        paused_s=limiter_used.paused_total_s,
        lowest_rate=lowest if lowest < limiter_used.rate_per_s else None,
        outage_s=breaker.outage_total_s + breaker.outage_s(),
    )


@dataclass(frozen=True)
class RunParts:
    """What a run hands its pool: its outcome table, control, clock, metrics and summary."""

    table: OutcomeTable
    control: RunControl
    clock: Clock
    metrics: Metrics
    summary: RunSummary


NOT_JUDGED = (Outcome.PENDING, Outcome.SKIPPED, Outcome.INVALID)


def check_failure_rate(settings: Settings, summary: RunSummary, control: RunControl) -> None:
    """Stop the run once too many finished orders failed (--max-failure-rate)."""
    limit = settings.max_failure_rate
    if limit is None:
        return
    counts = summary.outcomes
    # judged: the orders this run sent and got an answer for (an order skipped by a
    # precondition, or invalid, was never sent; a pending one has no answer)
    finished = summary.answered - sum(counts.get(o.value, 0) for o in NOT_JUDGED)
    failed = finished - sum(counts.get(o.value, 0) for o in SUCCESS)
    if finished >= settings.min_orders and failed * 100 > limit * finished:
        control.abort(
            f"{failed} of {finished} finished orders failed ({failed * 100 / finished:.1f}%), "
            f"more than --max-failure-rate {limit:g}%: check the input and the report"
        )


async def drain(
    busy: Sequence[asyncio.Future[None]], control: RunControl, grace_s: float, clock: Clock
) -> None:
    """Give requests in flight ``grace_s`` seconds on ``clock`` (less after a second signal),
    then cancel them."""
    finished = asyncio.gather(*busy, return_exceptions=True)
    await first_of(clock, grace_s, finished, control.hurry_event.wait())
    await cancel_all(busy)
