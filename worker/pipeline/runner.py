"""One run of `run`, `retry` or `run --select`: the input, read and claimed in the ledger batch
by batch, is the pool's source; the ledger is its sink. Also the dry run, which reads and
checks the input and sends nothing, and the run's record in the ledger (begin, counts, end).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

import structlog

from worker.domain.classifier import OutcomeTable
from worker.domain.errors import LedgerError, WorkerError
from worker.domain.models import (
    SUCCESS,
    Outcome,
    Result,
    RunOptions,
    RunReport,
    RunSummary,
    new_run_id,
)
from worker.ledger import Ledger
from worker.pipeline.control import RunControl
from worker.pipeline.feed import Feed
from worker.pipeline.lease import Held, keep_lease
from worker.pipeline.order import OrderState
from worker.pipeline.pool import PoolStats, RunParts, check_failure_rate, send_through_pool
from worker.pipeline.progress import ProgressReporter
from worker.runtime.clock import Clock, SystemClock
from worker.runtime.logs import flush_logs, lost_lines
from worker.runtime.loop import settle_gc
from worker.runtime.metrics import Metrics
from worker.settings import Settings
from worker.sinks.ledger import LedgerChannel, LedgerThread, ResultSink
from worker.sources import Batch, OrderSource

log = structlog.get_logger(__name__)

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
        ask: Callable[[list[Result]], bool] | None = None,
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
        self._claimed = 0  # orders claimed to be sent (held to options.approved)
        writer = None if options.dry_run else self._ledger
        self._sink = ResultSink(writer, self.run_id, self.summary, self.metrics)
        self._stats: PoolStats | None = None  # the pool's, once it ran
        self._ask = ask  # a person's word on a canary that was not clean (None: stop, exit 4)
        self._feed = Feed(low=settings.concurrency)
        self._held = Held(settings, shared=ledger.lease_every_s is not None)
        self._progress = ProgressReporter(
            self.summary,
            lambda: self.control.requests,
            bar=options.progress_bar,
            interval_s=settings.progress_interval,
        )
        self._progress.total = options.total

    @property
    def options(self) -> RunOptions:  # how this run treats its input
        return self._options

    async def execute(self) -> RunReport:
        """Run to the end (or to a stop) and return how it went; the ledger is flushed."""
        settle_gc()
        started = time.monotonic()
        ledger = self._ledger.ledger
        if not self._options.dry_run:
            await self._ledger.call(
                ledger.begin_run,
                self.run_id,
                self._options.command,
                self._settings.api_url,
                self._options.who,
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
        if self._options.dry_run:
            progress = asyncio.create_task(self._progress.run())
            try:
                await self._produce(None)
            finally:
                progress.cancel()
                await asyncio.gather(progress, return_exceptions=True)
        else:
            await self._send_all()
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

    async def _send_all(self) -> None:
        parts = RunParts(self._table, self.control, self._clock, self.metrics, self.summary)
        flusher = asyncio.create_task(self._sink.run(self._ledger_failed))
        lease = asyncio.create_task(keep_lease(self._ledger, self.run_id, self._feed))
        try:
            channel = LedgerChannel(self._ledger, self.run_id)
            self._stats = await send_through_pool(
                self._settings, self, self._sink, self._progress, parts, ask=self._ask,
                channel=channel,
            )  # fmt: skip
        finally:
            flusher.cancel()
            await asyncio.gather(flusher, return_exceptions=True)
            lease.cancel()  # renewed up to the end: its last rows are written below
            await asyncio.gather(lease, return_exceptions=True)
            await self._final_flush()

    # -- the pool's source: the input, claimed in the ledger batch by batch -------------------

    def helpers(self) -> list[Coroutine[Any, Any, None]]:
        """The producer."""
        return [self._produce(self._feed)]

    async def take(self) -> OrderState | None:
        """The next claimed order; one an earlier run may have sent is looked up first."""
        order_id = await self._feed.get()
        if order_id is None:
            return None
        uncertain = order_id in self._uncertain
        if uncertain:
            self._uncertain.discard(order_id)
        return OrderState(order_id, verify=uncertain)

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
        batches = self._source.batches(self._held.batch)
        while not self.control.stopping:
            batch = await asyncio.to_thread(_next_batch, batches)
            if batch is None:
                break
            self.summary.read += len(batch)
            await self._claim(batch, feed)
        await self._held.settle(
            lambda ids: self._claim([(order_id, None) for order_id in ids], feed),
            lambda: self.control.stopping,
        )

    async def _claim(self, batch: Batch, feed: Feed | None) -> None:
        """Claim a batch in the ledger; feed what is to be sent."""
        epoch = self._feed.epoch  # a lease lapsing meanwhile sets the claimed ones aside
        plan = await self._ledger.call(
            self._ledger.ledger.claim,
            batch,
            self.run_id,
            force=self._options.force,
            dry=self._options.dry_run,
        )
        self._held.ids += plan.held
        self.summary.duplicates += plan.duplicates
        self.summary.skipped_final += len(plan.skipped)
        for outcome in plan.skipped:
            self._skipped[outcome] = self._skipped.get(outcome, 0) + 1
        self._uncertain |= plan.uncertain
        if self._beyond_approval(len(plan.to_send)):
            return
        for result in plan.invalid:
            self._sink.add(result)
            if len(self.summary.first_invalid) < FIRST_INVALID and result.message:
                self.summary.first_invalid.append(result.message.split(": ", 1)[0])
        if plan.invalid:
            check_failure_rate(self._settings, self.summary, self.control)
        if feed is None:
            self.summary.sent_requests += len(plan.to_send)
            return
        await feed.put(plan.to_send, epoch)

    def _beyond_approval(self, more: int) -> bool:
        """What was confirmed and capped is what is sent: claimed orders beyond the approved
        count (the input changed after it was counted) stop the run before any is sent."""
        approved = self._options.approved
        if approved is None or self._options.dry_run:
            return False
        self._claimed += more
        if self._claimed <= approved:
            return False
        self.control.stop_by_limit(
            f"the input holds more orders to send than the {approved} counted before sending "
            "(it changed after it was counted, or --max-orders): the rest were not sent; check "
            "it, then run the same command again"
        )
        return True

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
            stats = self._stats
            if stats is not None:
                self.summary.paused_s = stats.paused_s
                self.summary.lowest_rate = stats.lowest_rate
                self.summary.outage_s = stats.outage_s
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
            plan=self._options.plan,
        )


def _next_batch(batches: Iterator[Batch]) -> Batch | None:
    return next(batches, None)
