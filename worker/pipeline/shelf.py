"""Orders waiting for their retry: a timer each, not a sleeping worker.

An order whose answer calls for a backoff (a 5xx, a timeout, a 429's Retry-After) is put on the
shelf with its delay; its worker takes the next order at once. When the delay is over, the order
is ready, and the next free worker takes it before any fresh order from the source. The pool
keeps its workers until the source is dry and the shelf is empty; on a stop, whatever is on the
shelf is recorded `pending`, as an order stopped before its answer is.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

from worker.pipeline.order import OrderState
from worker.pipeline.ports import Source
from worker.runtime.clock import Clock


def _nothing() -> None:
    """Nobody is told."""


class RetryShelf:
    """Orders waiting for their retry (each a timer on the run's clock) and orders whose time
    has come."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._ready: deque[OrderState] = deque()
        self._waiting: dict[int, tuple[OrderState, asyncio.Future[None]]] = {}
        self._changed = asyncio.Event()  # an order became ready, or the shelf emptied
        self.on_change: Callable[[], None] = _nothing  # told when orders come or go

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
            self._ready.append(found[0])
            self._changed.set()

    def pop(self) -> OrderState | None:
        """An order whose delay is over (the oldest first), or None."""
        if self._ready:
            state = self._ready.popleft()
            self.on_change()
            return state
        return None

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
            yield self._ready.popleft()
        self._changed.set()
        self.on_change()


class OrderPicker:
    """Where a worker finds its next order: one whose retry is due first, else the source's.

    While orders wait on the shelf, the source is watched alongside it (one take shared by the
    workers, never cancelled), so that a due retry never waits for the source; with nothing on
    the shelf, a worker simply waits for the source."""

    def __init__(self, shelf: RetryShelf, stopping: Callable[[], bool]) -> None:
        self.shelf = shelf
        self._stopping = stopping
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
            state = shelf.pop()
            if state is not None:
                return state
            if self._dry and self._taking is None:
                if not len(shelf):
                    return None
                await shelf.changed()
                continue
            if not shelf.waiting and self._taking is None:
                state = await source.take()  # the common case: nothing on the shelf
                if state is None:
                    self.source_ran_dry()
                    continue
                return state
            if self._taking is None:
                self._taking = asyncio.ensure_future(source.take())
                self.straight_from_source = False
            taking = self._taking
            woken = asyncio.ensure_future(shelf.changed())
            either: set[asyncio.Future[Any]] = {taking, woken}
            await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
            woken.cancel()
            if taking.done() and self._taking is taking:
                self._taking = None
                self._look()
                state = taking.result()
                if state is None:
                    self.source_ran_dry()
                    continue
                return state
        return None

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
