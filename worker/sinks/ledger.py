"""The ledger as a run's sink: every result counted (``Tally``) and batched into the ledger.

``add`` never awaits, so a result that has been received is buffered even if its worker is
cancelled the next instant; ``flush`` writes the buffer in one transaction on the ledger thread.
The flusher writes one transaction at a time (group commit), at most FLUSH_DELAY_S after the
first result it has not written yet, or as soon as FLUSH_EVERY are waiting: under load each
transaction takes everything that arrived meanwhile, and a crash loses only the answers of the
last tenth of a second, whose orders a resume looks up before sending again (why fewer and
larger transactions: docs/development.md, "The hot path").
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, ParamSpec, TypeVar

import structlog

from worker.domain.answer import Answer
from worker.domain.errors import LedgerError
from worker.domain.models import Result
from worker.ledger import Ledger
from worker.ledger.audit import attempt_row
from worker.pipeline.order import OrderState
from worker.pipeline.tally import Tally
from worker.runtime.clock import Clock, SystemClock, first_of

log = structlog.get_logger(__name__)

FLUSH_EVERY = 1024  # results: write at once
FLUSH_DELAY_S = 0.1  # the longest a received answer waits before its transaction starts
STALL_S = 1.0  # a write the ledger has not taken this long holds every request until it has

P = ParamSpec("P")
T = TypeVar("T")


class LedgerThread:
    """Runs every ledger call on one dedicated thread, so SQLite never blocks the event loop."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ledger")

    async def call(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run ``fn(*args, **kwargs)`` on the ledger thread."""
        # Shielded: once submitted, a ledger write completes even if the caller is cancelled.
        future = self.submit(fn, *args, **kwargs)
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            future.add_done_callback(_consume)  # its error, if any, is the caller's no more
            raise

    async def ask(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run the question ``fn(*args, **kwargs)`` on the ledger thread; a caller cancelled
        before it starts takes it out of the queue (the writes behind it, such as a stopping
        run's last results, do not wait for an answer no one will read)."""
        return await self.submit(fn, *args, **kwargs)

    def submit(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> asyncio.Future[T]:
        """Start ``fn(*args, **kwargs)`` on the ledger thread; its future (which a cancelled
        waiter does not cancel when shielded)."""
        loop = asyncio.get_running_loop()
        return loop.run_in_executor(self._executor, lambda: fn(*args, **kwargs))

    def close(self) -> None:
        """Finish queued calls and stop the thread."""
        self._executor.shutdown(wait=True)


def _consume(future: asyncio.Future[Any]) -> None:
    """Retrieve a finished call's error (the caller was cancelled and keeps its data)."""
    if not future.cancelled() and (error := future.exception()) is not None:
        log.debug("ledger_call_failed_after_cancel", error=str(error))


class LedgerSink:
    """Receives results from every worker."""

    def __init__(
        self,
        ledger: LedgerThread | None,
        run_id: str,
        tally: Tally | None,
        clock: Clock | None = None,
    ) -> None:
        self._ledger = ledger  # None in a dry run: nothing is written
        self._clock = clock or SystemClock()  # the flusher's delays run on it
        self._tally = tally  # None: a copy of results counted elsewhere (a consumer's)
        self._run_id = run_id
        self._buffer: list[Result] = []
        self._attempts: list[tuple[object, ...]] = []  # the attempt log's rows not yet written
        # a write whose flush was cancelled: its future, its results and its attempts
        self._writing: (
            tuple[asyncio.Future[None], list[Result], list[tuple[object, ...]]] | None
        ) = None
        self._waiting = asyncio.Event()  # something is buffered
        self._full = asyncio.Event()  # FLUSH_EVERY are buffered
        self._flush_lock = asyncio.Lock()
        self._pause: Callable[[float], None] | None = None  # holds the requests (``brake``)

    def brake(self, pause: Callable[[float], None]) -> None:
        """While a write waits on the ledger longer than STALL_S (a database that has gone
        away, a file locked by another program), ``pause`` (the limiter's brake) holds every
        request, again and again until the write ends: the answers that cannot be recorded
        stay few (those in flight), not thousands sent meanwhile."""
        self._pause = pause

    def add(self, result: Result) -> None:
        """Buffer, count and log one order's result (never awaits; the result is buffered
        before anything that could fail)."""
        if self._ledger is not None:
            self._buffer.append(result)
            self._waiting.set()
            if len(self._buffer) >= FLUSH_EVERY:
                self._full.set()
        if self._tally is not None:
            self._tally.count(result)

    def attempt(self, state: OrderState, method: str, number: int, answer: Answer) -> None:
        """Buffer one answered request for the attempt log: written in the same transaction
        as the results that arrived with it, never after its order's result."""
        if self._ledger is not None:
            if not self._attempts:
                self._waiting.set()  # once a batch: the flusher looks at both buffers
            self._attempts.append(attempt_row(self._run_id, state.order_id, method, number, answer))

    def attempts(self, rows: list[tuple[object, ...]]) -> None:
        """Buffer attempt rows already made (a consumer's, kept with its order)."""
        if self._ledger is not None and rows:
            self._attempts += rows
            self._waiting.set()

    async def record(self, state: OrderState, result: Result) -> None:
        """The pool's sink: buffer the result; nothing for an order found another run's before
        its DELETE (its row is that run's to write)."""
        if state.lost:
            log.info("order_taken_by_another_run", order_id=state.order_id)
            if self._tally is not None:
                self._tally.summary.taken_elsewhere += 1
            return
        self.add(result)

    def interrupted(self, _order: object, result: Result) -> None:
        """A worker stopped before the answer: the order is recorded `pending`."""
        self.add(result)

    async def flush(self) -> None:
        """Write what is buffered; on failure the results stay buffered and LedgerError rises.

        A flush cancelled while its transaction runs leaves that transaction to finish on the
        ledger thread; the next flush waits for it and writes its rows again only if it failed
        (the attempt log is appended to, so a committed batch must not be written twice)."""
        async with self._flush_lock:
            if self._ledger is None:
                return
            if self._writing is not None:
                await self._settle_interrupted_write()
            if not (self._buffer or self._attempts):
                return
            batch, self._buffer = self._buffer, []
            tried, self._attempts = self._attempts, []
            self._waiting.clear()
            self._full.clear()
            write = self._ledger.submit(self._ledger.ledger.record, batch, self._run_id, tried)
            self._writing = (write, batch, tried)
            try:
                await self._written(write)
            except LedgerError:
                self._writing = None
                self._buffer[:0] = batch  # kept for the final flush
                self._attempts[:0] = tried
                raise
            self._writing = None

    async def _written(self, write: asyncio.Future[None]) -> None:
        """Until ``write`` ends (its error raised); every request held while it takes longer
        than STALL_S (``brake``)."""
        pause = self._pause
        if pause is not None:
            while not await first_of(self._clock, STALL_S, asyncio.shield(write)):
                log.warning("ledger_slow", waited_s=STALL_S, results=len(self._buffer))
                pause(STALL_S * 1.5)  # until the next look, and a little more
        await asyncio.shield(write)

    async def _settle_interrupted_write(self) -> None:
        assert self._writing is not None
        write, batch, tried = self._writing
        self._writing = None
        try:
            await write
        except LedgerError:
            self._buffer[:0] = batch
            self._attempts[:0] = tried

    async def run(self, on_error: Callable[[str], None]) -> None:
        """Flush FLUSH_DELAY_S after something is buffered (at once when FLUSH_EVERY are),
        until cancelled."""
        while True:
            await self._waiting.wait()
            await first_of(self._clock, FLUSH_DELAY_S, self._full.wait())
            try:
                await self.flush()
            except LedgerError as exc:
                on_error(str(exc))
                return

    def unrecorded(self) -> list[Result]:
        """Results that could not be written (after a final flush failed)."""
        return list(self._buffer)


class LedgerChannel:
    """`cancel-orders control` through the ledger (on the ledger's thread)."""

    def __init__(self, ledger: LedgerThread, run_id: str) -> None:
        self._ledger = ledger
        self._run_id = run_id

    async def commands(self) -> dict[str, str]:
        return await self._ledger.ask(self._ledger.ledger.steering, self._run_id)

    async def publish(self, status: dict[str, Any]) -> None:
        await self._ledger.ask(self._ledger.ledger.publish, self._run_id, status)
