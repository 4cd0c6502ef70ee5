"""Orders waiting for their retry: a timer each, not a sleeping worker.

An order whose answer calls for a backoff (a 5xx, a timeout, a 429's Retry-After) is put on the
shelf with its delay; its worker takes the next order at once. When the delay is over, the order
is ready, and the next free worker takes it before any fresh order from the source, but at the
end of the input: once the fresh orders left are known and would all be sent within
RETRY_LAG_S of its time, they go first. The run's last seconds are then the retries kept back,
sent back to back, instead of slots left empty while the last orders' backoffs run out
(docs/development.md, "The cost goals"). The pool keeps its workers until the source is dry and
the shelf is empty; on a stop, whatever is on the shelf is recorded `pending`, as an order
stopped before its answer is.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

from worker.pipeline.order import OrderState
from worker.pipeline.ports import Source
from worker.runtime.clock import Clock

RETRY_LAG_S = 5.0  # at the end of the input, a due retry waits this long at most for fresh ones


def _nothing() -> None:
    """Nobody is told."""


def _unknown() -> float:
    """No pace is known: a due retry never waits for fresh orders."""
    return 0.0


class RetryShelf:
    """Orders waiting for their retry (each a timer on the run's clock) and orders whose time
    has come."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._ready: deque[tuple[float, OrderState]] = deque()  # (when it became due, order)
        self._waiting: dict[int, tuple[OrderState, asyncio.Future[None]]] = {}
        self._changed = asyncio.Event()  # an order became ready, or the shelf emptied
        self.on_change: Callable[[], None] = _nothing  # told when orders come or go

    def now(self) -> float:
        """The run's clock."""
        return self._clock.monotonic()

    @property
    def waiting(self) -> int:
        """Orders whose delay is not over yet."""
        return len(self._waiting)

    def __len__(self) -> int:
        return len(self._ready) + len(self._waiting)

    def put(self, state: OrderState, delay_s: float) -> None:
        """Shelve an order for ``delay_s`` seconds."""
        key = id(state)
        self._waiting[key] = (state, asyncio.ensure_future(self._due(key, delay_s)))
        self.on_change()

    async def _due(self, key: int, delay_s: float) -> None:
        await self._clock.sleep(delay_s)
        found = self._waiting.pop(key, None)
        if found is not None:
            self._ready.append((self._clock.monotonic(), found[0]))
            self._changed.set()

    def pop(self) -> OrderState | None:
        """An order whose delay is over (the oldest first), or None."""
        if self._ready:
            _, state = self._ready.popleft()
            self.on_change()
            return state
        return None

    def oldest_due(self) -> float | None:
        """When the oldest ready order became due; None when none is ready."""
        return self._ready[0][0] if self._ready else None

    async def changed(self) -> None:
        """Wait until an order is ready or nothing waits any more (at once when either holds
        already); the caller looks again."""
        if self._ready or not self._waiting:
            return
        self._changed.clear()
        await self._changed.wait()

    def clear(self) -> Iterator[OrderState]:
        """Every order still on the shelf, its timer cancelled (the run stopped)."""
        for state, timer in self._waiting.values():
            timer.cancel()
            yield state
        self._waiting.clear()
        while self._ready:
            yield self._ready.popleft()[1]
        self._changed.set()
        self.on_change()


class OrderPicker:
    """Where a worker finds its next order: one whose retry is due first, else the source's.

    While orders wait on the shelf, the source is watched alongside it (one take shared by the
    workers, never cancelled), so that a due retry never waits for the source; with nothing on
    the shelf, a worker simply waits for the source. At the end of the input the fresh orders
    left go before a due retry when all of them would be sent, at ``pace`` (requests a
    second), within RETRY_LAG_S of its time."""

    def __init__(
        self,
        shelf: RetryShelf,
        stopping: Callable[[], bool],
        pace: Callable[[], float] = _unknown,
    ) -> None:
        self.shelf = shelf
        self._stopping = stopping
        self._pace = pace
        self._taking: asyncio.Future[OrderState | None] | None = None
        self._dry = False  # the source has no more orders
        # nothing on the shelf, no take shared, the source not dry: a worker takes straight
        # from the source
        self.straight_from_source = True
        shelf.on_change = self._look

    def source_ran_dry(self) -> None:
        """The source said it has no more orders."""
        self._dry = True
        self.straight_from_source = False

    def _look(self) -> None:
        self.straight_from_source = not self._dry and self._taking is None and not len(self.shelf)

    async def next(self, source: Source) -> OrderState | None:
        """The next order; None when the source is dry and nothing waits on the shelf (or
        the run is stopping)."""
        shelf = self.shelf
        while not self._stopping():
            if shelf.oldest_due() is not None:
                state = await self._retry_or_fresh(source)
            elif self._dry and self._taking is None:
                if not len(shelf):
                    return None
                await shelf.changed()
                continue
            elif not shelf.waiting and self._taking is None:
                state = await source.take()  # the common case: nothing on the shelf
                if state is None:
                    self.source_ran_dry()
            else:
                state = await self._either(source)
            if state is not None:
                return state
        return None

    async def _either(self, source: Source) -> OrderState | None:
        """Orders wait on the shelf: the source's order, or None when one on the shelf became
        ready first (or the source ran dry); the source's take is shared by the workers that
        wait, and never cancelled."""
        if self._taking is None:
            self._taking = asyncio.ensure_future(source.take())
            self.straight_from_source = False
        taking = self._taking
        woken = asyncio.ensure_future(self.shelf.changed())
        either: set[asyncio.Future[Any]] = {taking, woken}
        await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
        woken.cancel()
        if not (taking.done() and self._taking is taking):
            return None
        self._taking = None
        self._look()
        state = taking.result()
        if state is None:
            self.source_ran_dry()
        return state

    async def _retry_or_fresh(self, source: Source) -> OrderState | None:
        """The oldest ready retry, or a fresh order ahead of it when the fresh orders left are
        known and would all be sent within RETRY_LAG_S of the retry's time; None when that
        fresh order was not there (the source ran dry)."""
        shelf = self.shelf
        due = shelf.oldest_due()
        left = source.left()
        pace = self._pace()
        if due is None or not left or pace <= 0 or self._dry or self._taking is not None:
            return shelf.pop()
        if shelf.now() + left / pace > due + RETRY_LAG_S:
            return shelf.pop()
        state = await source.take()  # the orders left are in hand: it does not wait
        if state is None:
            self.source_ran_dry()
        return state

    def leftovers(self) -> Iterator[tuple[OrderState, str]]:
        """The run is over: the orders still on the shelf, and one taken from the source and
        never started, each with why it stays pending."""
        taken, self._taking = self._taking, None
        if taken is not None:
            if taken.done() and not taken.cancelled() and taken.exception() is None:
                state = taken.result()
                if state is not None:
                    yield state, "not sent: the run was stopping"
            else:
                taken.cancel()
        for state in self.shelf.clear():
            yield state, "not sent: the run stopped before its retry"
