"""`cancel-orders consume`: one replica of a consumer group on the requests stream.

Entries are read with ``XREADGROUP`` (at most twice ``concurrency`` held at a time), claimed
with ``XAUTOCLAIM`` from consumers that stopped refreshing them, and kept fresh while held, so
that retries, backoff and the rate limiter never make a live consumer's entries look
abandoned. Each order goes through the same dispatcher as `run`; right before its DELETE (after
the rate limiter) the entry is checked to be still this consumer's. The result is written to
the results stream and the entry acknowledged in one script, which first checks ownership again.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from functools import partial
from typing import Any

import structlog

from worker.api.connection import connect
from worker.domain.classifier import OutcomeTable
from worker.domain.errors import ConfigError
from worker.domain.models import FINAL, Outcome, Result, RunReport, RunSummary, new_run_id
from worker.pipeline.breaker import CircuitBreaker
from worker.pipeline.control import RunControl, limits_watcher
from worker.pipeline.dispatcher import Dispatcher, OrderState, RetryPolicy
from worker.pipeline.progress import ProgressReporter
from worker.pipeline.runner import drain
from worker.queue import streams as streams_module
from worker.queue.limiter import GroupRateLimiter
from worker.queue.streams import Streams, patiently, result_fields
from worker.runtime.clock import Clock, SystemClock
from worker.runtime.logs import flush_logs
from worker.runtime.loop import settle_gc
from worker.runtime.metrics import Metrics, serve
from worker.settings import Settings
from worker.sources import IdValidator

log = structlog.get_logger(__name__)

READ_BLOCK_MS = 1000
EMPTY_CHECK_S = 0.5
TAKE_BACK_S = 2.0  # how often (and after how long idle) this consumer's own pending entries that
# nothing here holds are taken back


@dataclass(slots=True)
class Entry:
    """One request entry held by this consumer."""

    entry_id: str
    order_id: str
    deliveries: int
    earlier: bool = False  # delivered to this name before this process started: maybe sent


@dataclass
class _Lane:
    """One worker: its task, and whether it is working on an entry (shutdown spares it)."""

    task: asyncio.Task[Any] | None = None
    busy: bool = False
    state: OrderState | None = None
    finishing: bool = False  # writing a result that has been received

    @property
    def sending(self) -> bool:
        """A request of this worker is on the wire, or its answer is being written: the
        shutdown gives it the grace period."""
        return self.finishing or (self.state is not None and self.state.in_flight)


class Consumer:
    """Reads, claims, refreshes, dispatches and finishes entries until stopped (or empty)."""

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
        self._exit_when_empty = exit_when_empty
        self.control = control or RunControl()
        self._clock = clock or SystemClock()
        self._table = OutcomeTable.load(settings.outcome_table)
        self._validator = IdValidator(settings.id_pattern)
        self.summary = RunSummary()
        self._held: dict[str, Entry] = {}
        self._queue: asyncio.Queue[Entry] = asyncio.Queue()
        self._space = asyncio.Event()
        self._limit = settings.concurrency * 2
        self._busy = 0
        self._background: set[asyncio.Task[Any]] = set()
        self.run_id = new_run_id()
        self.metrics = Metrics()

    # -- lifecycle ------------------------------------------------------------------------------

    async def run(self) -> RunReport:
        """Consume until a signal, a fatal answer or (with exit_when_empty) an empty group."""
        settle_gc()
        started = time.monotonic()
        await self._streams.ping()
        await patiently(self._streams.ensure_group, lambda: False, "group creation")
        limiter = GroupRateLimiter(self._settings.rate, self._clock, self._streams)
        limiter.stopping = lambda: self.control.stopping
        api = connect(self._settings, self._clock, limiter, self.metrics)
        s = self._settings
        breaker = CircuitBreaker.for_workers(
            self._clock, outage_timeout_s=s.outage_timeout, workers=s.concurrency
        )
        breaker.on_state = self.metrics.circuit_changed
        dispatcher = Dispatcher(
            client=api.client,
            tokens=api.tokens,
            limiter=limiter,
            table=self._table,
            policy=RetryPolicy(s.max_attempts, s.max_wait, api.backoff),
            control=self.control,
            clock=self._clock,
            breaker=breaker,
            still_mine=self._still_mine,
            metrics=self.metrics,
        )
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
                await api.close()
                where = f"{s.metrics_host}:{s.metrics_port}"
                raise ConfigError(f"--metrics-port: cannot listen on {where}: {exc}") from None
        progress = ProgressReporter(
            self.summary, lambda: self.control.requests, bar=False, interval_s=s.progress_interval
        )
        helpers = [self._spawn(self._read()), self._spawn(self._claim())]
        helpers.append(self._spawn(self._take_back(started)))
        helpers.append(self._spawn(progress.run()))
        watcher = limits_watcher(s, self.control, self._clock)
        if watcher is not None:
            helpers.append(self._spawn(watcher))
        refresher = self._spawn(self._refresh())
        lanes = [_Lane() for _ in range(s.concurrency)]
        for lane in lanes:
            lane.task = self._spawn(self._work(dispatcher, lane))
        try:
            await self._until_done()
        finally:
            self.control.stop_event.set()
            for task in helpers:
                task.cancel()
            for lane in lanes:
                if lane.task is not None and not lane.sending:
                    lane.task.cancel()
            busy = [lane.task for lane in lanes if lane.task is not None and not lane.task.done()]
            await drain(busy, self.control, s.grace)
            refresher.cancel()
            await asyncio.gather(*self._background, return_exceptions=True)
            await api.close()
            if server is not None:
                await server.cleanup()
        return self._report(time.monotonic() - started)

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task: asyncio.Task[Any] = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        task.add_done_callback(self.control.task_ended)  # a task that dies stops the consumer
        return task

    def healthy(self) -> bool:
        """For /healthz: running, and Redis answering."""
        return not self.control.stopping and not streams_module.FAILING

    async def _until_done(self) -> None:
        stop = asyncio.ensure_future(self.control.stop_event.wait())
        try:
            while not stop.done():
                await asyncio.wait({stop}, timeout=EMPTY_CHECK_S)
                if self._exit_when_empty and not stop.done() and await self._empty():
                    log.info("queue_empty", consumer=self._names.consumer)
                    return
        finally:
            stop.cancel()

    async def _empty(self) -> bool:
        """Nothing held here, and nothing new or pending in the whole group."""
        if self._held or self._busy or not self._queue.empty():
            return False
        n = self._names

        async def group() -> dict[str, Any] | None:
            groups = await self._streams.redis.xinfo_groups(n.stream)
            return next((g for g in groups if g["name"] == n.group), None)

        info = await patiently(group, lambda: self.control.stopping, "group info")
        if info is None or int(info["pending"]) > 0:
            return False
        lag = info.get("lag")
        if lag is not None:
            return int(lag) == 0
        stream = await patiently(
            lambda: self._streams.redis.xinfo_stream(n.stream),
            lambda: self.control.stopping,
            "stream info",
        )
        return stream is not None and info["last-delivered-id"] == stream["last-generated-id"]

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

    # -- reading, claiming, refreshing ---------------------------------------------------------

    async def _read(self) -> None:
        n = self._names
        while not self.control.stopping:
            room = self._limit - len(self._held)
            if room <= 0:
                self._space.clear()
                await self._space.wait()
                continue

            async def read(count: int = room) -> Any:
                return await self._streams.redis.xreadgroup(
                    n.group, n.consumer, {n.stream: ">"}, count=count, block=READ_BLOCK_MS
                )

            answer = await patiently(read, lambda: self.control.stopping, "read")
            for _stream, entries in answer or []:
                for entry_id, fields in entries:
                    await self._admit(Entry(entry_id, (fields or {}).get("order_id", ""), 1))

    async def _claim(self) -> None:
        """Claim entries idle longer than claim_idle (their consumer stopped refreshing them)."""
        n = self._names
        idle_ms = int(self._settings.claim_idle * 1000)
        every = min(max(self._settings.claim_idle / 4, 0.2), 15.0)
        while not self.control.stopping:
            start = "0-0"
            while not self.control.stopping and len(self._held) < self._limit:
                room = self._limit - len(self._held)

                async def claim(first: str = start, count: int = room) -> Any:
                    return await self._streams.redis.xautoclaim(
                        n.stream, n.group, n.consumer, idle_ms, first, count=count
                    )

                answer = await patiently(claim, lambda: self.control.stopping, "claim")
                if not answer:
                    break
                start, entries = answer[0], answer[1]
                for entry_id, fields in entries:
                    if fields is None or entry_id in self._held:
                        continue
                    deliveries = await self._deliveries(entry_id)
                    log.info("entry_claimed", entry_id=entry_id, deliveries=deliveries)
                    await self._admit(Entry(entry_id, fields.get("order_id", ""), deliveries))
                if start == "0-0":
                    break
            await asyncio.sleep(every)

    async def _take_back(self, started: float) -> None:
        """Take back the entries Redis counts as this consumer's that nothing here holds.

        A read or a claim whose reply is lost with its connection has still delivered its
        entries to this consumer, and redis-py sends the command again on a new connection, so
        the first reply's entries are never seen; a process restarted under the same name finds
        its predecessor's entries in its list. Left alone, they would wait ``claim_idle`` for
        a claim (and ``--exit-when-empty`` with them).
        """
        n = self._names
        redis = self._streams.redis
        while not self.control.stopping:
            await asyncio.sleep(TAKE_BACK_S)

            async def mine() -> Any:
                return await redis.xpending_range(
                    n.stream,
                    n.group,
                    "-",
                    "+",
                    self._limit * 4,
                    consumername=n.consumer,
                    idle=int(TAKE_BACK_S * 1000),
                )

            for row in await patiently(mine, lambda: self.control.stopping, "own pending") or []:
                entry_id = str(row["message_id"])
                if entry_id in self._held:
                    continue
                found = await patiently(
                    partial(redis.xrange, n.stream, entry_id, entry_id),
                    lambda: self.control.stopping,
                    "entry",
                )
                if not found:
                    continue  # deleted from the stream: the claim loop drops it from the list
                deliveries = int(row["times_delivered"])
                earlier = row["time_since_delivered"] / 1000 > time.monotonic() - started
                log.info("entry_taken_back", entry_id=entry_id, deliveries=deliveries)
                order_id = str((found[0][1] or {}).get("order_id", ""))
                await self._admit(Entry(entry_id, order_id, deliveries, earlier))

    async def _deliveries(self, entry_id: str) -> int:
        n = self._names

        async def pending() -> Any:
            redis = self._streams.redis
            return await redis.xpending_range(n.stream, n.group, entry_id, entry_id, 1)

        found = await patiently(pending, lambda: self.control.stopping, "pending")
        return int(found[0]["times_delivered"]) if found else 1

    async def _refresh(self) -> None:
        """Reset the idle time of every held entry that is still this consumer's."""
        every = max(self._settings.claim_idle / 3, 0.1)
        while True:
            await asyncio.sleep(every)
            held = list(self._held)
            for start in range(0, len(held), 200):
                chunk = held[start : start + 200]
                lost = await patiently(partial(self._streams.refresh, chunk), _never, "refresh")
                for entry_id in lost or []:
                    log.warning("entry_taken_by_another_consumer", entry_id=entry_id)
                    self._release(entry_id)

    # -- one entry -------------------------------------------------------------------------------

    async def _admit(self, entry: Entry) -> None:
        """Hold an entry: dead-letter it, record it invalid, or queue it for a worker."""
        if entry.entry_id in self._held:
            return
        self._held[entry.entry_id] = entry
        s = self._settings
        if entry.deliveries > s.max_deliveries:
            reason = f"delivered {entry.deliveries} times (max_deliveries {s.max_deliveries})"
            code = "MAX_DELIVERIES"
            result = Result(entry.order_id, Outcome.RETRYABLE_FAILED, None, code, reason)
            await self._finish(entry, result, dead_reason=reason)
            return
        _, invalid = self._validator.check(entry.order_id, f"entry {entry.entry_id}")
        if invalid is not None:
            garbled = "\ufffd" in entry.order_id
            reason = "the entry is not valid UTF-8" if garbled else ""
            await self._finish(entry, invalid, dead_reason=reason)
            return
        self._queue.put_nowait(entry)

    async def _work(self, dispatcher: Dispatcher, lane: _Lane) -> None:
        while not self.control.stopping:
            entry = await self._queue.get()
            if entry.entry_id not in self._held:
                continue  # taken by another consumer meanwhile
            lane.busy = True
            self._busy += 1
            try:
                await self._process(dispatcher, entry, lane)
            finally:
                self._busy -= 1
                lane.busy = False
                lane.state = None

    async def _process(self, dispatcher: Dispatcher, entry: Entry, lane: _Lane) -> None:
        checked = await patiently(
            lambda: self._streams.owned(entry.entry_id, entry.order_id),
            lambda: self.control.stopping,
            "ownership",
        )
        if checked is None:
            return
        owned, final = checked
        if not owned:
            self._release(entry.entry_id)
            return
        if final:  # a second entry for an order already final: acknowledged, not sent again
            log.info("order_already_final", order_id=entry.order_id, outcome=final)
            await self._finish(entry, None)
            return
        # delivered before: the consumer that had it may have sent the DELETE before dying
        state = lane.state = OrderState(
            entry.order_id, entry_id=entry.entry_id, verify=entry.deliveries > 1 or entry.earlier
        )
        result = await dispatcher.process(state)
        if result.outcome is Outcome.PENDING:
            if state.lost:
                self._release(entry.entry_id)
            return  # stopping or lost: the entry stays for another consumer
        dead = "attempts exhausted" if result.outcome is Outcome.RETRYABLE_FAILED else ""
        lane.finishing = True
        try:
            await self._finish(entry, result, dead_reason=dead)
        finally:
            lane.finishing = False

    async def _still_mine(self, state: OrderState) -> bool:
        entry_id = state.entry_id
        if entry_id not in self._held:
            return False
        checked = await patiently(
            lambda: self._streams.owned(entry_id, state.order_id),
            lambda: self.control.stopping,
            "ownership",
        )
        return checked is not None and checked[0]

    async def _finish(self, entry: Entry, result: Result | None, dead_reason: str = "") -> None:
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
                    "finished_at": _now_iso(),
                }
            )
        order_id = entry.order_id if result is None else result.order_id  # an invalid ID: cut
        done = await patiently(
            lambda: self._streams.finish(entry.entry_id, order_id, final, dead_reason, fields),
            self.control.hurry_event.is_set,
            "finish",
        )
        if result is not None and done:
            self.summary.add(result)
            self.metrics.finished(result)
            log.info("order", consumer=self._names.consumer, **result.log_fields())
        elif done is False:
            log.warning("entry_lost_before_ack", entry_id=entry.entry_id, order_id=entry.order_id)
        self._release(entry.entry_id)

    def _release(self, entry_id: str) -> None:
        self._held.pop(entry_id, None)
        self._space.set()


def _never() -> bool:
    return False


def _now_iso() -> str:
    from worker.ledger.store import now_iso  # noqa: PLC0415 - one clock format everywhere

    return now_iso()
