"""Time, injected: production reads the event loop's clock; tests pass a fake one."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from datetime import UTC, datetime
from typing import Protocol


class Clock(Protocol):
    """Monotonic time and sleeping, the only two things time-dependent code needs."""

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Wait this long (or not at all when seconds <= 0)."""
        ...


class SystemClock:
    """The real clock."""

    # Seconds from time.monotonic(), called directly: it is read several times per request.
    monotonic = staticmethod(time.monotonic)

    async def sleep(self, seconds: float) -> None:
        """asyncio.sleep, skipped for non-positive durations."""
        if seconds > 0:
            await asyncio.sleep(seconds)


async def first_of(clock: Clock, seconds: float, *waits: Awaitable[object]) -> bool:
    """Wait until one of ``waits`` is done or ``seconds`` have passed on ``clock``; True when one
    of them finished first. What has not finished by then is cancelled, the timer included."""
    futures = [asyncio.ensure_future(w) for w in waits]
    timer = asyncio.ensure_future(clock.sleep(max(seconds, 0.0)))
    everything = [timer, *futures]
    try:
        await asyncio.wait(everything, return_when=asyncio.FIRST_COMPLETED)
    finally:
        done = any(f.done() for f in futures)
        for future in everything:
            future.cancel()
        await asyncio.gather(*everything, return_exceptions=True)
    return done


def now_iso() -> str:
    """UTC now, ISO-8601 with milliseconds."""
    return iso_utc(datetime.now(UTC))


def iso_utc(moment: datetime) -> str:
    """An aware time as the ledger writes times: UTC, ISO-8601 with milliseconds, ``Z``."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class _EpochIso:
    """Seconds since the epoch as ISO-8601 UTC with milliseconds (``now_iso``'s format), the
    date and time formatted once per second: it runs for every request (the attempt log)."""

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def __call__(self, moment: float) -> str:
        second = int(moment)
        if second != self._second:
            self._second = second
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return "%s.%03dZ" % (self._prefix, int((moment - second) * 1000))  # noqa: UP031 - faster


iso_from_epoch = _EpochIso()
