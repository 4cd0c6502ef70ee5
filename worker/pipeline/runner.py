"""Wiring and lifecycle of one run: producer -> feed -> workers -> results sink.

Shutdown has two phases: on a signal or a fatal answer the producer stops and every worker that
has no request in flight is cancelled at once; requests in flight get ``grace`` seconds to
finish and be recorded, then the rest are cancelled and stay `pending`.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter, deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import structlog

from worker.api.connection import Api, connect
from worker.domain.classifier import OutcomeTable
from worker.domain.errors import LedgerError, WorkerError
from worker.domain.models import SUCCESS, Outcome, RunOptions, RunReport, RunSummary, new_run_id
from worker.ledger import Ledger
from worker.pipeline.breaker import CircuitBreaker
from worker.pipeline.control import RunControl, limits_watcher
from worker.pipeline.dispatcher import Dispatcher, OrderState, RetryPolicy
from worker.pipeline.limiter import RateLimiter
from worker.pipeline.progress import ProgressReporter
from worker.runtime.clock import Clock, SystemClock
from worker.runtime.logs import flush_logs, lost_lines
from worker.runtime.loop import settle_gc
from worker.runtime.metrics import Metrics
from worker.settings import Settings
from worker.sinks.ledger import LedgerThread, ResultSink
from worker.sources import Batch, OrderSource

log = structlog.get_logger(__name__)

BATCH = 1000  # IDs read, checked and claimed (marked pending) at a time
RECORDED_LIMITS = ("rate", "concurrency", "max_attempts", "timeout", "max_wait")  # retry reuses
FIRST_INVALID = 5  # where the first invalid IDs are, for the dry run's summary


class Runner:
    """One run of `run` or `retry` (or a dry run of either)."""

    def __init__(
        self,
        settings: Settings,
        source: OrderSource,
        ledger: Ledger,
        options: RunOptions,
        *,
        control: RunControl | None = None,
        clock: Clock | None = None,
        table: OutcomeTable | None = None,
    ) -> None:
        self._settings = settings
        self._source = source
        self._ledger = LedgerThread(ledger)
        self._options = options
        self.metrics = Metrics()
        self.control = control or RunControl()
        self.control.in_flight = lambda: self.metrics.in_flight
        self.control.grace_s = settings.grace
        self._clock = clock or SystemClock()
        self._table = table or OutcomeTable.load(settings.outcome_table)
        self.run_id = new_run_id()
        self.summary = RunSummary()
        self._skipped: dict[str, int] = {}
        self._uncertain: set[str] = set()  # queued orders an earlier run may have sent
        writer = None if options.dry_run else self._ledger
        self._sink = ResultSink(writer, self.run_id, self.summary, self.metrics)
        self._limiter: RateLimiter | None = None
        self._breaker = CircuitBreaker.for_workers(
            self._clock, outage_timeout_s=settings.outage_timeout, workers=settings.concurrency
        )
        self._breaker.on_state = self.metrics.circuit_changed
        self._feed = Feed(low=settings.concurrency)

    @property
    def options(self) -> RunOptions:
        """How this run treats its input."""
        return self._options

    async def execute(self) -> RunReport:
        """Run to the end (or to a stop) and return how it went; the ledger is flushed."""
        settle_gc()
        started = time.monotonic()
        ledger = self._ledger.ledger
        if not self._options.dry_run:
            await self._ledger.call(
                ledger.begin_run, self.run_id, self._options.command, self._settings.api_url
            )
        log.info(
            "run_started",
            run_id=self.run_id,
            command=self._options.command,
            target=self._settings.target_label if self._settings.base_url else None,
            dry_run=self._options.dry_run,
            rate=self._settings.rate,
            concurrency=self._settings.concurrency,
        )
        progress = ProgressReporter(
            self.summary,
            lambda: self.control.requests,
            bar=self._options.progress_bar,
            interval_s=self._settings.progress_interval,
        )
        progress.total = self._options.total
        progress_task = asyncio.create_task(progress.run())
        limits_task = self._watch_limits()
        try:
            if self._options.dry_run:
                await self._produce(None)
            else:
                await self._send_all()
        finally:
            watchers = [progress_task] + ([limits_task] if limits_task is not None else [])
            for task in watchers:
                task.cancel()
            await asyncio.gather(*watchers, return_exceptions=True)
        if not self._options.dry_run:
            await self._counts_from_ledger()
        report = self._finish(time.monotonic() - started)
        if not self._options.dry_run:
            try:
                await self._ledger.call(
                    ledger.end_run, self.run_id, report.exit_code, report.as_dict()
                )
            except LedgerError as exc:  # the orders' rows are what matters; say it and go on
                log.error("run_summary_not_recorded", error=str(exc))  # noqa: TRY400 - expected
        self._ledger.close()
        log.info("run_summary", **report.as_dict())
        flush_logs()
        return report

    def _watch_limits(self) -> asyncio.Task[None] | None:
        """The deadline and stop-file watcher (exit 4), when the settings set one."""
        watcher = (
            None
            if self._options.dry_run
            else limits_watcher(self._settings, self.control, self._clock)
        )
        return None if watcher is None else asyncio.ensure_future(watcher)

    async def _send_all(self) -> None:
        api = connect(self._settings, self._clock, metrics=self.metrics)
        self._limiter = api.limiter
        flusher = asyncio.create_task(self._sink.run(self._ledger_failed))
        try:
            dispatcher = self._dispatcher(api)
            producer = asyncio.create_task(self._produce(self._feed))
            lanes = [_Lane() for _ in range(self._settings.concurrency)]
            for lane in lanes:
                lane.task = asyncio.create_task(self._work(dispatcher, lane))
            await self._supervise(producer, lanes)
        finally:
            flusher.cancel()
            await asyncio.gather(flusher, return_exceptions=True)
            await self._final_flush()
            await api.close()

    def _dispatcher(self, api: Api) -> Dispatcher:
        s = self._settings
        return Dispatcher(
            client=api.client,
            tokens=api.tokens,
            limiter=api.limiter,
            table=self._table,
            policy=RetryPolicy(s.max_attempts, s.max_wait, api.backoff),
            control=self.control,
            clock=self._clock,
            breaker=self._breaker,
            metrics=self.metrics,
        )

    async def _supervise(self, producer: asyncio.Task[None], lanes: list[_Lane]) -> None:
        workers = [lane.task for lane in lanes if lane.task is not None]
        for worker in workers:
            worker.add_done_callback(self.control.task_ended)
        stop = asyncio.ensure_future(self.control.stop_event.wait())
        # return_exceptions: a worker that dies stops the run (task_ended), never the wait
        # for the others, whose requests in flight are drained before the session closes.
        everything = asyncio.gather(producer, *workers, return_exceptions=True)
        waits: set[asyncio.Future[Any]] = {stop, everything}
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        if self.control.stopping:
            producer.cancel()
            for lane in lanes:
                if lane.task is not None and not (lane.state and lane.state.in_flight):
                    lane.task.cancel()
            busy = [w for w in workers if not w.done()]
            if busy:
                await self._grace(busy)
        stop.cancel()
        await asyncio.gather(everything, stop, return_exceptions=True)

    async def _grace(self, busy: list[asyncio.Task[None]]) -> None:
        await drain(busy, self.control, self._settings.grace)

    async def _produce(self, feed: Feed | None) -> None:
        """Read, validate and claim the input in batches; feed the workers (none in a dry run)."""
        try:
            await self._read_input(feed)
        except WorkerError as exc:
            self.control.abort(str(exc))
        except Exception as exc:  # a bug must stop the run, never hang it
            log.exception("producer_failed")
            self.control.abort(f"internal error while reading the input: {exc!r}")
        finally:
            if feed is not None:
                feed.close()

    async def _read_input(self, feed: Feed | None) -> None:
        batches = self._source.batches(BATCH)
        dry = self._options.dry_run
        while not self.control.stopping:
            batch = await asyncio.to_thread(_next_batch, batches)
            if batch is None:
                return
            self.summary.read += len(batch)
            plan = await self._ledger.call(
                self._ledger.ledger.claim, batch, self.run_id, force=self._options.force, dry=dry
            )
            self.summary.duplicates += plan.duplicates
            self.summary.skipped_final += len(plan.skipped)
            for outcome in plan.skipped:
                self._skipped[outcome] = self._skipped.get(outcome, 0) + 1
            self._uncertain |= plan.uncertain
            for result in plan.invalid:
                self._sink.add(result)
                if len(self.summary.first_invalid) < FIRST_INVALID and result.message:
                    self.summary.first_invalid.append(result.message.split(": ", 1)[0])
            if plan.invalid:
                self._check_failure_rate()
            if feed is None:
                self.summary.sent_requests += len(plan.to_send)
                continue
            await feed.put(plan.to_send)

    async def _work(self, dispatcher: Dispatcher, lane: _Lane) -> None:
        while not self.control.stopping:
            lane.state = None
            # Let the other workers answered in this turn of the event loop record their
            # results first: the next requests then leave together, and the other end wakes
            # once for the lot instead of once for each (at zero latency on loopback, a wake-up
            # for every request cost about 6 microseconds of kernel time per request).
            await asyncio.sleep(0)
            order_id = await self._feed.get()
            if order_id is None or self.control.stopping:
                return
            uncertain = order_id in self._uncertain
            if uncertain:
                self._uncertain.discard(order_id)
            state = lane.state = OrderState(order_id, verify=uncertain)
            try:
                result = await dispatcher.process(state)
            except asyncio.CancelledError:
                self._sink.add(state.result(Outcome.PENDING, "interrupted before an answer"))
                raise
            except Exception as exc:  # a bug must stop the run, never lose the order
                log.exception("worker_failed", order_id=order_id)
                self._sink.add(state.result(Outcome.PENDING, "internal error"))
                self.control.abort(f"internal error while sending: {exc!r}")
                return
            self._sink.add(result)
            if result.outcome not in SUCCESS:
                self._check_failure_rate()

    def _check_failure_rate(self) -> None:
        """Stop the run once too many finished orders failed (--max-failure-rate)."""
        limit = self._settings.max_failure_rate
        if limit is None:
            return
        counts = self.summary.outcomes
        finished = self.summary.answered - counts.get(Outcome.PENDING.value, 0)
        failed = finished - sum(counts.get(o.value, 0) for o in SUCCESS)
        if finished >= self._settings.min_orders and failed * 100 > limit * finished:
            self.control.abort(
                f"{failed} of {finished} finished orders failed ({failed * 100 / finished:.1f}%), "
                f"more than --max-failure-rate {limit:g}%: check the input and the report"
            )

    def _ledger_failed(self, message: str) -> None:
        self.control.abort(f"ledger write failed: {message}")

    async def _final_flush(self) -> None:
        try:
            await self._sink.flush()
        except LedgerError as exc:
            self.control.abort(f"ledger write failed: {exc}")
        for result in self._sink.unrecorded():  # one event per result the ledger could not take
            log.error("unrecorded_result", **result.log_fields())

    async def _counts_from_ledger(self) -> None:
        """The summary's counts are the ledger's: what this run answered, and what it claimed
        and left `pending` (a stop), which no worker reported."""
        try:
            outcomes, codes = await self._ledger.call(self._ledger.ledger.run_counts, self.run_id)
        except LedgerError:
            return  # the ledger failed: the counts of what arrived are all there is
        self.summary.outcomes = Counter(outcomes)
        self.summary.error_codes = Counter(codes)

    def _finish(self, elapsed_s: float) -> RunReport:
        if not self._options.dry_run:
            self.summary.sent_requests = self.control.requests
            if self._limiter is not None:
                self.summary.paused_s = self._limiter.paused_total_s
                if self._limiter.lowest_pace_per_s < self._limiter.rate_per_s:
                    self.summary.lowest_rate = self._limiter.lowest_pace_per_s
            self.summary.outage_s = self._breaker.outage_total_s + self._breaker.outage_s()
        self.summary.log_lines_lost = lost_lines()
        code = self.control.exit_code
        if code is None:
            skipped_ok = all(Outcome(o) in SUCCESS for o in self._skipped)
            code = 0 if self.summary.all_succeeded() and skipped_ok else 1
            if self._options.dry_run:
                code = 0 if not self.summary.outcomes.get(Outcome.INVALID.value) else 1
        total = self._options.total
        stopped = self.control.exit_code is not None
        return RunReport(
            self.run_id,
            code,
            self.summary,
            elapsed_s,
            self._options.dry_run,
            self.control.reason,
            dict(self._skipped),
            str(self._settings.ledger),
            not_read=max(0, total - self.summary.read) if total is not None else 0,
            layout=dict(getattr(self._source, "layout", {})),
            limits={key: getattr(self._settings, key) for key in RECORDED_LIMITS},
            target=(
                f"{self._settings.target_label} (tokens from {self._settings.token_host})"
                if self._settings.base_url
                else ""
            ),
            resume=self._options.resume if stopped else "",
        )


async def drain(busy: list[asyncio.Task[None]], control: RunControl, grace_s: float) -> None:
    """Give requests in flight ``grace_s`` seconds (less after a second signal), then cancel."""
    finished = asyncio.gather(*busy, return_exceptions=True)
    hurry = asyncio.ensure_future(control.hurry_event.wait())
    waits: set[asyncio.Future[Any]] = {finished, hurry}
    await asyncio.wait(waits, timeout=grace_s, return_when=asyncio.FIRST_COMPLETED)
    hurry.cancel()
    for worker in busy:
        worker.cancel()
    await asyncio.gather(finished, hurry, return_exceptions=True)


class Feed:
    """Order IDs from the producer to the workers. The producer adds a whole batch once fewer
    than ``low`` are waiting, so it wakes once per batch, not once per order."""

    def __init__(self, low: int) -> None:
        self._ids: deque[str] = deque()
        self._low = low
        self._closed = False
        self._available = asyncio.Event()  # an ID is waiting, or the feed is closed
        self._wanted = asyncio.Event()  # fewer than ``low`` are waiting
        self._wanted.set()

    async def put(self, ids: Iterable[str]) -> None:
        """Add these IDs once the workers are running low."""
        await self._wanted.wait()
        self._ids.extend(ids)
        if len(self._ids) >= self._low:
            self._wanted.clear()
        if self._ids:
            self._available.set()

    def close(self) -> None:
        """No more IDs: ``get`` returns None once the waiting ones are taken."""
        self._closed = True
        self._available.set()

    async def get(self) -> str | None:
        """The next ID; None when the feed is closed and empty."""
        ids = self._ids
        while not ids:
            if self._closed:
                return None
            self._available.clear()
            await self._available.wait()
        if len(ids) <= self._low:
            self._wanted.set()
        return ids.popleft()


@dataclass
class _Lane:
    """One worker: its task and the order it is working on, if any."""

    task: asyncio.Task[None] | None = None
    state: OrderState | None = None


def _next_batch(batches: Iterator[Batch]) -> Batch | None:
    return next(batches, None)
