"""``--canary N``: the first N orders go alone, and the rest only if every one of them ended
`cancelled` or `already_cancelled`. A person at a terminal is shown their outcomes and asked
(``ask``); without one (``--yes``) a canary that is not clean stops the run with exit 4, the
rest `pending`, for the same command to resume once the cause is understood. A canary that
took the whole input (fewer orders than N) holds nothing back: the run ends as any run does."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable

import structlog

from worker.domain.models import SUCCESS, Result
from worker.pipeline.control import RunControl

log = structlog.get_logger(__name__)


class Canary:
    """The gate the workers pass before taking an order."""

    def __init__(
        self, size: int, control: RunControl, ask: Callable[[list[Result]], bool] | None = None
    ) -> None:
        self.size = size
        self._control = control
        self._ask = ask
        self._reserved = 0  # canary orders workers have set out to take
        self._expected = size  # canary results still to come, less slots that found no order
        self._results: list[Result] = []
        self._open = asyncio.Event()
        if size <= 0:
            self._open.set()

    @property
    def passed(self) -> bool:
        """Off, or its orders ended well (or a person let the run go on)."""
        return self._open.is_set()

    async def admit(self) -> bool:
        """Before a worker takes an order: True when its order is one of the canary's; the
        others wait here for the canary's verdict (a stop cancels them)."""
        if self._open.is_set():
            return False
        if self._reserved < self.size:
            self._reserved += 1
            return True
        await self._open.wait()
        return False

    async def not_taken(self) -> None:
        """A canary slot that found no order (the input ran out first, or the run stopped)."""
        self._expected -= 1
        await self._settle()

    async def done(self, result: Result) -> None:
        """A canary order's result."""
        self._results.append(result)
        await self._settle()

    async def _settle(self) -> None:
        if self._open.is_set() or len(self._results) < self._expected or self._control.stopping:
            return
        results = self._results
        bad = [r for r in results if r.outcome not in SUCCESS]
        outcomes = dict(Counter(r.outcome.value for r in results))
        if not bad:
            log.info("canary_passed", orders=len(results), outcomes=outcomes)
            self._open.set()
            return
        if self._expected < self.size:  # the input ran out first: no "rest" to hold back
            log.info("canary_was_the_whole_input", orders=len(results), outcomes=outcomes)
            self._open.set()
            return
        if self._ask is not None and await asyncio.to_thread(self._ask, results):
            log.warning("canary_accepted", orders=len(results), outcomes=outcomes)
            self._open.set()
            return
        named = ", ".join(f"{r.order_id} {r.outcome.value}" for r in bad[:5])
        self._control.stop_by_limit(
            f"canary: {len(bad)} of the first {len(results)} orders did not end cancelled or "
            f"already_cancelled ({named}); the rest were not sent: look at them "
            "(cancel-orders report), then run the same command again to go on"
        )
