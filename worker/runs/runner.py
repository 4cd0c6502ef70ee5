"""One run of `run`, `retry`, `run --select` or `apply`: the input claimed in the ledger
(``worker.sources.claimed``) is the pool's source; the ledger (``worker.sinks.ledger``) is its
sink. Also the dry run, which reads and checks the input and sends nothing, and the run's
record in the ledger (begin, counts, end).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable, Mapping

import structlog

from worker.domain.classifier import OutcomeTable
from worker.domain.errors import LedgerError
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
from worker.pipeline.pool import PoolStats, RunParts, send_through_pool
from worker.pipeline.progress import ProgressReporter
from worker.pipeline.tally import Tally
from worker.runtime.clock import Clock, SystemClock
from worker.runtime.logs import flush_logs, lost_lines
from worker.runtime.loop import cancel_all, settle_gc
from worker.runtime.metrics import Metrics
from worker.settings import Settings
from worker.sinks.ledger import LedgerChannel, LedgerSink, LedgerThread
from worker.sources import OrderInput
from worker.sources.claimed import ClaimedInput

log = structlog.get_logger(__name__)

RECORDED_LIMITS = ("rate", "concurrency", "max_attempts", "timeout", "max_wait")  # retry reuses
RUN_EVENTS = ("run_started", "run_summary")
NO_LEDGER = "none (a check records nothing)"


class Runner:
    """One run of `run` or `retry` (or a dry run of either)."""

    def __init__(
        self,
        settings: Settings,
        source: OrderInput,
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
        writer = None if options.dry_run else self._ledger
        tally = Tally(self.summary, self.metrics, logged=not options.predict)
        self._sink = LedgerSink(writer, self.run_id, tally, self._clock)
        # a check's events are named so: its outcomes are predictions, nothing was cancelled
        self._events = ("check_started", "check_summary") if options.predict else RUN_EVENTS
        self._input = ClaimedInput(
            settings, source, self._ledger, self.run_id, options, self.control, self._sink,
            self.summary, self._clock,
        )  # fmt: skip
        self._stats: PoolStats | None = None  # the pool's, once it ran
        self._ask = ask  # a person's word on a canary that was not clean (None: stop, exit 4)
        self._progress = ProgressReporter(
            self.summary,
            lambda: self.control.requests,
            bar=options.progress_bar,
            interval_s=settings.progress_interval,
            clock=self._clock,
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
            self._events[0],
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
                await self._input.produce(None)
            finally:
                await cancel_all([progress])
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
        log.info(self._events[1], **report.as_dict())
        flush_logs()
        return report

    async def _send_all(self) -> None:
        parts = RunParts(self._table, self.control, self._clock, self.metrics, self.summary)
        flusher = asyncio.create_task(self._sink.run(self._ledger_failed))
        try:
            channel = LedgerChannel(self._ledger, self.run_id)
            self._stats = await send_through_pool(
                self._settings, self._input, self._sink, self._progress, parts, ask=self._ask,
                channel=channel, predict=self._options.predict, taken=await self._taken_before(),
            )  # fmt: skip
        finally:
            await cancel_all([flusher])
            await self._final_flush()

    async def _taken_before(self) -> float:
        """The busiest second the gateway took without a 429 in the ledger's recent attempts
        (a run stopped or killed an hour ago included): how high a pace lowered by 429s may
        climb back (0.0: unknown, or a check, which only looks)."""
        if self._options.predict:
            return 0.0
        try:
            return await self._ledger.call(self._ledger.ledger.busiest_clean_second)
        except LedgerError:
            return 0.0

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
        except LedgerError:  # the ledger failed: the counts of what arrived, and the orders
            # claimed that no worker took, `pending` in the ledger as claimed
            summary = self.summary
            told = sum(summary.outcomes.values()) + summary.skipped_final + summary.duplicates
            left = summary.read - told - summary.taken_elsewhere
            if left > 0:
                summary.outcomes[Outcome.PENDING.value] += left
            return
        if self._ledger.ledger.lease_every_s is not None:  # shared: other runs write too
            # answers this run recorded that a run whose lease had lapsed answered again after
            # (its request was on the wire when it froze): the order's row is now that run's
            unrecorded = _answered(Counter(r.outcome for r in self._sink.unrecorded()))
            answered = _answered(self.summary.outcomes) - unrecorded - _answered(outcomes)
            self.summary.taken_elsewhere += max(0, answered)
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
            skipped_ok = all(Outcome(o) in SUCCESS for o in self._input.skipped)
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
            dict(self._input.skipped),
            NO_LEDGER if self._options.predict else str(self._settings.ledger),
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
            resume_before=self._options.plan_expires_at if stopped else "",
            predicted=self._options.predict,
        )


def _answered(outcomes: Mapping[str, int]) -> int:
    """Orders counted with an outcome other than `pending`."""
    return sum(n for name, n in outcomes.items() if name != Outcome.PENDING)
