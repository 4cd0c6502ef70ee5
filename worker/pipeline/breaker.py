"""The circuit breaker: an outage stops the spending of attempts until one probe gets through.

Closed, it watches the latest answer of each of the last ``window`` orders answered (every
attempt counts, but an order counts once: the retries of a few failing orders never outweigh the
others). When at least ``min_samples`` orders are in and more than ``threshold`` of them last
failed as an outage does (5xx, timeouts, connection errors), it opens: nobody sends, and failures
of requests already in flight do not count against their orders. Short of that, while two or
more of them last failed so it *suspects* an outage: an order whose last attempt fails then
waits up to VERDICT_S for the breaker's verdict (``verdict``) before it is recorded as failed.

Open, one caller is let through at once as the probe (the dispatcher sends a GET, which any API
that is up answers, whatever the orders' own DELETEs do); any other answer than an outage
failure closes the breaker, a failure keeps it open for ``cooldown_s`` before the next probe,
then twice as long each time (up to ``max_cooldown_s``). An outage longer than
``outage_timeout_s`` makes ``admit`` answer False: the run then stops with its orders still
`pending`.

The orders that were failing when the API proved itself up are *excused*: their failures are
their own (orders that fail again and again, not an outage), and no longer count; they spend
their attempts and end `retryable_failed`, while an outage still opens the breaker on the
failures of the other orders.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Callable
from itertools import count

import structlog

from worker.domain.answer import Answer
from worker.domain.decision import Outage, is_outage
from worker.runtime.clock import Clock, first_of

log = structlog.get_logger(__name__)


VERDICT_S = 1.0  # the longest an order whose last attempt failed waits for the verdict
__all__ = ["VERDICT_S", "CircuitBreaker", "is_outage"]


class CircuitBreaker:
    """Shared by every worker of a run."""

    def __init__(
        self,
        clock: Clock,
        *,
        outage_timeout_s: float,
        window: int = 20,
        min_samples: int = 10,
        threshold: float = 0.5,
        cooldown_s: float = 1.0,
        max_cooldown_s: float = 30.0,
    ) -> None:
        self._clock = clock
        self._timeout_s = outage_timeout_s
        self._recent: OrderedDict[object, bool] = OrderedDict()  # order -> last was outage
        self._excused: set[object] = set()  # orders failing when the API proved itself up
        self._failed = 0  # how many of them last failed (kept, not summed, on every answer)
        self._window = window
        self._anonymous = count()  # a key for answers recorded without an order
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

    @classmethod
    def for_workers(cls, clock: Clock, *, outage_timeout_s: float, workers: int) -> CircuitBreaker:
        """A breaker whose window the orders in flight can fill: with ``workers`` requests in
        flight at most, an outage must be able to open it before any of them has spent its
        attempts (held orders keep their workers)."""
        window = min(20, max(4, workers + workers // 2))
        return cls(
            clock, outage_timeout_s=outage_timeout_s, window=window, min_samples=min(10, window)
        )

    @property
    def is_open(self) -> bool:
        """True while an outage is assumed (open or half-open)."""
        return self._opened_at is not None

    def outage_s(self) -> float:
        """How long the current outage has lasted (0 when closed)."""
        if self._opened_at is None:
            return 0.0
        return self._clock.monotonic() - self._opened_at

    def view(self) -> Outage:
        """Open, suspected (another recent order failing as an outage does too), or neither."""
        if self._opened_at is not None:
            return Outage.OPEN
        return Outage.SUSPECTED if self._failed >= 2 else Outage.NONE

    async def verdict(self) -> bool:
        """Wait up to VERDICT_S for the breaker to open; True when it is open."""
        if self._opened_at is None:
            await self._wait(VERDICT_S)
        return self._opened_at is not None

    def record(self, answer: Answer, *, probe: bool, order: object = None) -> None:
        """Count one answer to ``order``. ``probe``: the request ``admit`` let through as the
        probe."""
        outage = is_outage(answer)
        if self._opened_at is None:
            if order in self._excused:
                return  # its failures are its own
            recent = self._recent
            key = next(self._anonymous) if order is None else order
            self._failed += outage - recent.pop(key, False)
            recent[key] = outage
            if len(recent) > self._window:
                self._failed -= recent.popitem(last=False)[1]
            failed = self._failed
            if len(recent) >= self._min_samples and failed > self._threshold * len(recent):
                self._open(failed)
                self._wake()
            return
        if not outage:
            self._close()
        elif probe:
            self._probing = False
            self._retry_at = self._clock.monotonic() + self._cooldown_s
            log.warning("circuit_still_open", retry_in_s=self._cooldown_s, outage_s=self.outage_s())
            self._cooldown_s = min(self._max_cooldown_s, self._cooldown_s * 2)
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
        self._retry_at = now  # the probe goes at once: orders that fail are no outage
        self.outages += 1
        self.on_state(True)
        log.warning(
            "circuit_opened",
            failed=failed,
            of=len(self._recent),
            detail="most recent requests failed (5xx, timeouts, connection errors): probing",
        )

    def _close(self) -> None:
        assert self._opened_at is not None
        lasted = self._clock.monotonic() - self._opened_at
        self.outage_total_s += lasted
        self._opened_at = None
        self._probing = False
        self._excused.update(order for order, failed in self._recent.items() if failed)
        self._recent.clear()
        self._failed = 0
        self.on_state(False)
        log.info("circuit_closed", outage_s=round(lasted, 3))
        self._wake()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def _wait(self, seconds: float) -> None:
        """Until the state changes or ``seconds`` have passed on the injected clock."""
        await first_of(self._clock, seconds, self._changed.wait())
