"""One rate limit for a whole consumer group: the next free slot lives in Redis.

Every request of every replica takes a slot from a Lua script that reads the Redis server's
clock, so the replicas share one schedule of evenly spaced slots (``1 / (rate * margin)``
apart) whatever their own clocks say, and a 429 or quota pause moves the schedule for all of
them. The local asyncio-throttle cap still bounds each replica on its own.

Between taking a slot and its request reaching the API lie a Redis round trip, a sleep and the
replica's own scheduling, which differ from one replica to the next. The group's margin is
therefore wider than a single process's: with slots ``1 / (0.95 * rate)`` apart, any
``rate + 1`` of them span at least 1.05 s, so one request arriving up to 50 ms late still
cannot put more than ``rate`` of them into one second at the server.
"""

from __future__ import annotations

import asyncio

import structlog

from worker.api.limiter import MIN_SLEEP_S, RateLimiter
from worker.queue.streams import Streams, patiently
from worker.runtime.clock import Clock

log = structlog.get_logger(__name__)

GROUP_MARGIN = 0.95
# A slot used later than this (a frozen or starved replica) is taken again: the group margin
# absorbs up to 1/GROUP_MARGIN - 1 s (52 ms) of lateness and no more, so a request later than
# that could put rate + 1 requests into one second. On a loaded host this costs round trips to
# Redis and some pace, never the gateway's limit (at 0.2 s, three replicas beside a CPU-bound
# process sent 61 requests in one second at --rate 60).
LATE_S = 0.05


class GroupRateLimiter(RateLimiter):
    """A RateLimiter whose slots are shared through Redis."""

    def __init__(self, rate_per_s: float, clock: Clock, streams: Streams) -> None:
        super().__init__(rate_per_s, clock, margin=GROUP_MARGIN)
        self.learns = False  # this replica's requests are not the group's: halve on a 429
        self._streams = streams
        self._pauses: set[asyncio.Task[None]] = set()
        self.stopping = lambda: False

    async def acquire(self) -> float:
        """Take the group's next slot and wait for it. A slot that this replica reaches late
        (frozen by SIGSTOP, swapped, starved of CPU, or slow to hear back from Redis) belongs
        to a moment that has passed: the other replicas have used the time since, so sending
        now would put two slots' requests into one; a new slot is taken instead."""
        clock = self._clock
        while True:
            if self.held:
                await self.until_resumed()
            paused_s = self.paused_until - clock.monotonic()
            if paused_s > 0:  # a pause here starts before Redis has heard of it
                await clock.sleep(paused_s)
            asked = clock.monotonic()
            wait_ms = await patiently(self._take_slot, self.stopping, "rate limiter")
            if wait_ms is None:  # stopping: the caller checks and sends nothing
                return asked
            wait_s = wait_ms / 1000.0
            due = asked + wait_s
            if due - clock.monotonic() >= MIN_SLEEP_S:
                self.on_wait(wait_s)
                await clock.sleep(due - clock.monotonic())
            now = clock.monotonic()
            if now - due > LATE_S:
                log.info("rate_slot_late", late_s=round(now - due, 3))
                continue
            if now >= self.paused_until and not self.held:
                break
        if self._throttler is not None:
            await self._throttler.acquire()  # type: ignore[no-untyped-call]
        return due

    def late(self, due: float) -> bool:
        """True when the slot due at ``due`` has passed by more than LATE_S: whatever held the
        request since (an ownership check, a token refresh, a freeze) gave its moment to the
        other replicas."""
        return self._clock.monotonic() - due > LATE_S

    async def _take_slot(self) -> float:
        names = self._streams.names
        interval_ms = self._interval_s * 1000.0
        raw = await self._streams.slot_script(keys=[names.rate], args=[f"{interval_ms:.3f}", "0"])
        return float(raw)

    def pause(self, seconds: float) -> None:
        """Pause here at once, and the whole group through Redis."""
        super().pause(seconds)
        task = asyncio.get_running_loop().create_task(self._pause_group(seconds))
        self._pauses.add(task)
        task.add_done_callback(self._pauses.discard)

    async def _pause_group(self, seconds: float) -> None:
        names = self._streams.names

        async def call() -> object:
            return await self._streams.slot_script(
                keys=[names.rate], args=["0", f"{seconds * 1000.0:.3f}"]
            )

        await patiently(call, self.stopping, "group pause")
