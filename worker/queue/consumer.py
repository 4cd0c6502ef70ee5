"""`cancel-orders consume`: one replica of a consumer group on the requests stream.

The pool's source is the entries this consumer holds (``worker.queue.entries``); its sink is
the results stream: each result is written and its entry acknowledged in one script, which
first checks that the entry is still this consumer's. Right before each DELETE (after the rate
limiter, whose slots the whole group shares through Redis) the entry is checked again.
"""

from __future__ import annotations

import json
import time
from functools import partial

import structlog

from worker.domain.answer import Answer
from worker.domain.classifier import OutcomeTable
from worker.domain.errors import ConfigError
from worker.domain.location import PostgresUrl
from worker.domain.models import FINAL, Outcome, Result, RunReport, RunSummary, new_run_id
from worker.ledger.audit import attempt_row
from worker.ledger.schema import ATTEMPT_COLUMNS
from worker.pipeline.control import RunControl
from worker.pipeline.order import OrderState
from worker.pipeline.pool import RunParts, send_through_pool
from worker.pipeline.progress import ProgressReporter
from worker.queue import streams as streams_module
from worker.queue.entries import Entries
from worker.queue.limiter import GroupRateLimiter
from worker.queue.recording import LedgerCopy
from worker.queue.steering import GroupChannel
from worker.queue.streams import Streams, patiently, result_fields
from worker.runtime.clock import Clock, SystemClock, iso_from_epoch, now_iso
from worker.runtime.logs import flush_logs, info_event
from worker.runtime.loop import settle_gc
from worker.runtime.metrics import Metrics, serve
from worker.settings import Settings

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
        self.metrics = Metrics()
        self._entries = Entries(
            settings, streams, self.control, self._finish, exit_when_empty=exit_when_empty
        )
        self._copy: LedgerCopy | None = None  # --ledger postgresql://: results recorded there

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
            self.summary, lambda: self.control.requests, bar=False, interval_s=s.progress_interval
        )
        if isinstance(s.ledger, PostgresUrl):
            self._copy = LedgerCopy(s, self.run_id, self.control)
            await self._copy.start()
        parts = RunParts(self._table, self.control, self._clock, self.metrics, self.summary)
        try:
            await send_through_pool(
                s, self._entries, self, progress, parts, limiter=limiter,
                still_mine=self._still_mine, keepers=[self._entries.refresh()],
                channel=GroupChannel(self._streams),
            )  # fmt: skip
        finally:
            if server is not None:
                await server.cleanup()
        report = self._report(time.monotonic() - started)
        if self._copy is not None:
            await self._copy.close(report)
        return report

    def healthy(self) -> bool:
        """For /healthz: running, and Redis answering."""
        return not self.control.stopping and not streams_module.FAILING

    # -- the pool's sink: the results stream ------------------------------------------------------

    async def record(self, state: OrderState, result: Result) -> None:
        """Write the result and acknowledge; a `pending` one leaves the entry for later."""
        if result.outcome is Outcome.PENDING:
            if state.lost:
                log.info("entry_not_ours", entry_id=state.entry_id, order_id=state.order_id)
                self._entries.release(state.entry_id)
            return  # stopping or lost: the entry stays for another consumer
        dead = "attempts exhausted" if result.outcome is Outcome.RETRYABLE_FAILED else ""
        await self._finish(state.entry_id, state.order_id, result, dead, state.tried)

    def interrupted(self, state: OrderState, result: Result) -> None:
        """A worker stopped before the answer: the entry stays pending, for a claim."""

    def attempt(self, state: OrderState, method: str, number: int, answer: Answer) -> None:
        """One answered request: kept with the order, written in its result entry."""
        if state.tried is None:
            state.tried = []
        state.tried.append(attempt_row(self.run_id, state.order_id, method, number, answer))

    async def _still_mine(self, state: OrderState) -> bool:
        entry_id = state.entry_id
        if entry_id not in self._entries.held:
            return False
        checked = await patiently(
            partial(self._streams.owned, entry_id, state.order_id),
            lambda: self.control.stopping,
            "ownership",
        )
        return checked is not None and checked[0]

    async def _finish(
        self,
        entry_id: str,
        order_id: str,
        result: Result | None,
        dead_reason: str = "",
        tried: list[tuple[object, ...]] | None = None,
    ) -> None:
        """Write the result (None: none), maybe a dead letter, and acknowledge, atomically."""
        fields: list[str] = []
        final = ""
        if result is not None:
            final = result.outcome.value if result.outcome in FINAL else ""
            fields = result_fields(
                {
                    "order_id": result.order_id,
                    "outcome": result.outcome.value,
                    "http_status": result.http_status,
                    "error_code": result.error_code,
                    "message": result.message,
                    "attempts": result.attempts,
                    "consumer": self._names.consumer,
                    "finished_at": now_iso(),
                    "attempt_log": attempt_log(tried or []),
                }
            )
        written_id = order_id if result is None else result.order_id  # an invalid ID: cut
        done = await patiently(
            partial(self._streams.finish, entry_id, written_id, final, dead_reason, fields),
            self.control.hurry_event.is_set,
            "finish",
        )
        if result is not None and done:
            if self._copy is not None:
                self._copy.add(result, tried)
            self.summary.add(result)
            self.metrics.finished(result)
            info_event("order", {**result.log_fields(), "consumer": self._names.consumer})
        elif done is False:
            log.warning("entry_lost_before_ack", entry_id=entry_id, order_id=order_id)
        self._entries.release(entry_id)

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


def attempt_log(tried: list[tuple[object, ...]]) -> str:
    """A result entry's attempts, as JSON objects (the ledger's attempt columns)."""
    rows = [dict(zip(ATTEMPT_COLUMNS, row, strict=True)) for row in tried]
    for row in rows:
        sent = row["sent_at"]
        if isinstance(sent, float):
            row["sent_at"] = iso_from_epoch(sent)
    return json.dumps(rows, separators=(",", ":"))
