"""`cancel-orders consume`: one replica of a consumer group on the requests stream.

The pool's source is the entries this consumer holds (``worker.sources.stream_entries``), each
checked to be still this consumer's right before its DELETE (after the rate limiter, whose
slots the whole group shares through Redis); its sink is the results stream
(``worker.sinks.results_stream``).
"""

from __future__ import annotations

import time

import structlog

from worker.domain.classifier import OutcomeTable
from worker.domain.errors import ConfigError
from worker.domain.location import PostgresUrl
from worker.domain.models import RunReport, RunSummary, new_run_id
from worker.pipeline.control import RunControl
from worker.pipeline.pool import RunParts, send_through_pool
from worker.pipeline.progress import ProgressReporter
from worker.pipeline.tally import Tally
from worker.queue import streams as streams_module
from worker.queue.limiter import GroupRateLimiter
from worker.queue.steering import GroupChannel
from worker.queue.streams import Streams, patiently
from worker.runtime.clock import Clock, SystemClock
from worker.runtime.logs import flush_logs
from worker.runtime.loop import settle_gc
from worker.runtime.metrics import Metrics, serve
from worker.settings import Settings
from worker.sinks.ledger_copy import LedgerCopy
from worker.sinks.results_stream import ResultsStream
from worker.sources.stream_entries import StreamEntries

log = structlog.get_logger(__name__)


class Consumer:
    """Entries in, results out, through the pool, until stopped (or the group is empty)."""

    def __init__(
        self,
        settings: Settings,
        streams: Streams,
        *,
        exit_when_empty: bool = False,
        control: RunControl | None = None,
        clock: Clock | None = None,
    ) -> None:
        self._settings = settings
        self._streams = streams
        self._names = streams.names
        self.control = control or RunControl()
        self._clock = clock or SystemClock()
        self._table = OutcomeTable.load(settings.outcome_table)
        self.summary = RunSummary()
        self.run_id = new_run_id()
        self.metrics = Metrics(job=settings.job or streams.names.group)
        self._entries = StreamEntries(
            settings,
            streams,
            self.control,
            lambda *entry: self._results.finish(*entry),  # noqa: PLW0108 - made below
            exit_when_empty=exit_when_empty,
            clock=self._clock,
        )
        tally = Tally(self.summary, self.metrics, fields={"consumer": self._names.consumer})
        self._results = ResultsStream(
            streams, self.run_id, self.control, tally, self._entries.release
        )

    async def run(self) -> RunReport:
        """Consume until a signal, a fatal answer or (with exit_when_empty) an empty group."""
        settle_gc()
        started = time.monotonic()
        await self._streams.ping()
        await patiently(self._streams.ensure_group, lambda: False, "group creation")
        s = self._settings
        limiter = GroupRateLimiter(s.rate, self._clock, self._streams)
        limiter.stopping = lambda: self.control.stopping
        log.info(
            "consumer_started",
            stream=self._names.stream,
            group=self._names.group,
            consumer=self._names.consumer,
            rate=s.rate,
            concurrency=s.concurrency,
        )
        server = None
        if s.metrics_port is not None:
            try:
                server = await serve(self.metrics, s.metrics_host, s.metrics_port, self.healthy)
            except OSError as exc:
                where = f"{s.metrics_host}:{s.metrics_port}"
                raise ConfigError(f"--metrics-port: cannot listen on {where}: {exc}") from None
        progress = ProgressReporter(
            self.summary,
            lambda: self.control.requests,
            bar=False,
            interval_s=s.progress_interval,
            clock=self._clock,
        )
        copy = self._results.copy = (
            LedgerCopy(s, self.run_id, self.control) if isinstance(s.ledger, PostgresUrl) else None
        )
        if copy is not None:
            await copy.start()
        parts = RunParts(self._table, self.control, self._clock, self.metrics, self.summary)
        try:
            await send_through_pool(
                s, self._entries, self._results, progress, parts, limiter=limiter,
                channel=GroupChannel(self._streams),
            )  # fmt: skip
        finally:
            if server is not None:
                await server.cleanup()
        report = self._report(time.monotonic() - started)
        if copy is not None:
            await copy.close(report)
        return report

    def healthy(self) -> bool:
        """For /healthz: running, and Redis answering."""
        return not self.control.stopping and not streams_module.FAILING

    def _report(self, elapsed_s: float) -> RunReport:
        self.summary.sent_requests = self.control.requests
        code = self.control.exit_code
        if code is None:
            code = 0 if self.summary.all_succeeded() else 1
        report = RunReport(
            self.run_id,
            code,
            self.summary,
            elapsed_s,
            dry_run=False,
            reason=self.control.reason,
            ledger=f"redis stream {self._names.results}",
        )
        log.info("consumer_summary", consumer=self._names.consumer, **report.as_dict())
        flush_logs()
        return report
