"""The circuit breaker: an outage stops the spending of attempts until one probe gets through.

Closed, it watches the answers to the last ``window`` orders sent for the first time (retries of
a few failing orders say nothing about the API as a whole). When at least ``min_samples`` are in
and ``threshold`` of them or more are outage failures (5xx, timeouts, connection errors), it
opens: nobody sends, and failures of requests already in flight do not count against their
orders. After ``cooldown_s`` one caller is let through as the probe; any other answer than an
outage failure closes the breaker, another failure opens it again for twice as long (up to
``max_cooldown_s``). An outage longer than ``outage_timeout_s`` makes ``admit`` answer False:
the run then stops with its orders still `pending`.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from contextlib import suppress

import structlog

from worker.client import Answer
from worker.clock import Clock

log = structlog.get_logger(__name__)


def is_outage(answer: Answer) -> bool:
    """True for the failures an outage produces: any 5xx, a timeout or a connection error."""
    if answer.status is None:
        return answer.failure in ("timeout", "connection")
    return answer.status >= 500


class CircuitBreaker:
    """Shared by every worker of a run."""

    def __init__(
        self,
        clock: Clock,
        *,
        outage_timeout_s: float,
        window: int = 20,
        min_samples: int = 10,
        threshold: float = 0.75,
        cooldown_s: float = 1.0,
        max_cooldown_s: float = 30.0,
    ) -> None:
        self._clock = clock
        self._timeout_s = outage_timeout_s
        self._recent: deque[bool] = deque(maxlen=window)
        self._min_samples = min_samples
        self._threshold = threshold
        self._base_cooldown_s = cooldown_s
        self._max_cooldown_s = max_cooldown_s
        self._cooldown_s = cooldown_s
        self._opened_at: float | None = None
        self._retry_at = 0.0
        self._probing = False
        self._changed = asyncio.Event()
        self.outages = 0
        self.outage_total_s = 0.0
        self.on_state: Callable[[bool], None] = lambda _open: None  # metrics follow it

    @property
    def is_open(self) -> bool:
        """True while an outage is assumed (open or half-open)."""
        return self._opened_at is not None

    def outage_s(self) -> float:
        """How long the current outage has lasted (0 when closed)."""
        if self._opened_at is None:
            return 0.0
        return self._clock.monotonic() - self._opened_at

    def record(self, answer: Answer, *, probe: bool, first: bool = True) -> None:
        """Count one answer. ``probe``: the request ``admit`` let through as the probe;
        ``first``: the order's first attempt (only those can open the breaker)."""
        outage = is_outage(answer)
        if self._opened_at is None:
            if not first:
                return
            self._recent.append(outage)
            failed = sum(self._recent)
            if len(self._recent) >= self._min_samples and failed >= self._threshold * len(
                self._recent
            ):
                self._open(failed)
            return
        if not outage:
            self._close()
        elif probe:
            self._probing = False
            self._cooldown_s = min(self._max_cooldown_s, self._cooldown_s * 2)
            self._retry_at = self._clock.monotonic() + self._cooldown_s
            log.warning("circuit_still_open", retry_in_s=self._cooldown_s, outage_s=self.outage_s())
            self._wake()

    def release_probe(self) -> None:
        """The probe ended without an answer (the run stopped): let another caller probe."""
        if self._probing:
            self._probing = False
            self._wake()

    async def admit(self) -> bool | None:
        """Wait while the breaker is open. True: this caller is the probe; None: go ahead
        normally; False: the outage has lasted longer than the outage timeout."""
        while self._opened_at is not None:
            now = self._clock.monotonic()
            ends = self._opened_at + self._timeout_s
            if now >= ends:
                return False
            if not self._probing and now >= self._retry_at:
                self._probing = True
                log.info("circuit_probe", outage_s=round(now - self._opened_at, 3))
                return True
            wake = ends if self._probing else min(self._retry_at, ends)
            await self._wait(wake - now)
        return None

    def _open(self, failed: int) -> None:
        now = self._clock.monotonic()
        self._opened_at = now
        self._cooldown_s = self._base_cooldown_s
        self._retry_at = now + self._cooldown_s
        self.outages += 1
        self.on_state(True)
        log.warning(
            "circuit_opened",
            failed=failed,
            of=len(self._recent),
            retry_in_s=self._cooldown_s,
            detail="most recent requests failed (5xx, timeouts, connection errors): pausing",
        )

    def _close(self) -> None:
        assert self._opened_at is not None
        lasted = self._clock.monotonic() - self._opened_at
        self.outage_total_s += lasted
        self._opened_at = None
        self._probing = False
        self._recent.clear()
        self.on_state(False)
        log.info("circuit_closed", outage_s=round(lasted, 3))
        self._wake()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def _wait(self, seconds: float) -> None:
        """Until the state changes or ``seconds`` have passed on the injected clock."""
        changed = asyncio.ensure_future(self._changed.wait())
        timer = asyncio.ensure_future(self._clock.sleep(max(seconds, 0.0)))
        try:
            await asyncio.wait({changed, timer}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (changed, timer):
                task.cancel()
                with suppress(asyncio.CancelledError):
                    await task
