"""A virtual clock: sleeping tasks wake in time order, and no test waits on real time."""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time


class FakeClock:
    """Time moves only when every task is asleep, straight to the next wake-up."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()
        self.slept: list[float] = []

    def monotonic(self) -> float:
        """Virtual now."""
        return self.now

    async def sleep(self, seconds: float) -> None:
        """Park until virtual time reaches now + seconds."""
        self.slept.append(seconds)
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self.now + seconds, next(self._seq), future))
        await future

    @property
    def sleepers(self) -> int:
        """How many tasks are parked on the clock."""
        return sum(1 for _, _, future in self._sleepers if not future.done())

    def advance(self, seconds: float) -> None:
        """Move virtual time on by ``seconds``, waking every sleeper due by then."""
        self.now += seconds
        while self._sleepers and self._sleepers[0][0] <= self.now:
            _, _, future = heapq.heappop(self._sleepers)
            if not future.done():
                future.set_result(None)

    async def run(self, *tasks: asyncio.Task[object]) -> None:
        """Drive virtual time until these tasks are done."""
        while not all(t.done() for t in tasks):
            for _ in range(20):  # let every runnable task reach its next sleep
                await asyncio.sleep(0)
            if all(t.done() for t in tasks):
                break
            if not self._sleepers:
                continue
            wake, _, future = heapq.heappop(self._sleepers)
            self.now = max(self.now, wake)
            if not future.done():
                future.set_result(None)
        await asyncio.gather(*tasks)


class InstantClock:
    """Real monotonic time, but sleeping returns at once and is only recorded."""

    def __init__(self) -> None:
        self.offset = 0.0
        self.slept: list[float] = []

    def monotonic(self) -> float:
        """Real time plus whatever the test advanced."""
        return time.monotonic() + self.offset

    async def sleep(self, seconds: float) -> None:
        """Record and return."""
        self.slept.append(seconds)
        await asyncio.sleep(0)

    def advance(self, seconds: float) -> None:
        """Jump ahead (a token growing old)."""
        self.offset += seconds
