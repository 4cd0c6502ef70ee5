"""``--canary N``: the first N orders that no earlier run tried go alone, and the rest (the
orders earlier runs left among them) only if every one of them ended `cancelled` or
`already_cancelled`. A person at a terminal is shown their outcomes and asked
(``ask``); without one (``--yes``) a canary that is not clean stops the run with exit 4, the
rest `pending`, for the same command to resume once the cause is understood. A canary that
took the whole input (fewer orders than N) holds nothing back: the run ends as any run does."""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from collections.abc import Callable
from contextlib import suppress
from typing import Any

import structlog

from worker.domain.models import SUCCESS, Outcome, Result
from worker.pipeline.control import RunControl

log = structlog.get_logger(__name__)


def _settle_future(
    future: asyncio.Future[bool], value: bool | None, error: BaseException | None
) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(bool(value))


class Canary:
    """The gate the workers pass before taking an order."""

    def __init__(
        self, size: int, control: RunControl, ask: Callable[[list[Result]], bool] | None = None
    ) -> None:
        self.size = size
        self._control = control
        self._ask = ask
        self._reserved = 0  # canary slots reserved, less those that took no canary order
        self._dry = False  # a slot found no order: no canary order comes after it
        self._results: list[Result] = []
        self._open = asyncio.Event()
        if size <= 0:
            self._open.set()

    @property
    def answered(self) -> int:
        """Canary orders with a result so far."""
        return len(self._results)

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

    def give_back(self) -> None:
        """A canary slot whose order is not the canary's (an earlier run tried it: it waits for
        the verdict): the slot goes to the next order."""
        self._reserved -= 1

    async def verdict(self) -> None:
        """Until the canary has passed (a stop ends the run, and the waiter with it)."""
        await self._open.wait()

    async def not_taken(self) -> None:
        """A canary slot that found no order (the input ran out first, or the run stopped):
        the canary is then the orders its reserved slots took, however few (the slots no worker
        reserved are not waited for: with fewer workers than slots, all waiting for the
        verdict, they never would be)."""
        self._reserved -= 1
        self._dry = True
        await self._settle()

    @property
    def _expected(self) -> int:
        """Canary results to wait for."""
        return self._reserved if self._dry else self.size

    async def done(self, result: Result) -> None:
        """A canary order's result."""
        self._results.append(result)
        await self._settle()

    async def _question(self, results: list[Result]) -> bool:
        """A person's answer to the canary's question, read on a thread of its own that the
        process does not wait for: Ctrl-C, a deadline or `control stop` while it is asked ends
        the run at once (False), the question unanswered."""
        assert self._ask is not None
        ask = self._ask
        loop = asyncio.get_running_loop()
        answered: asyncio.Future[bool] = loop.create_future()

        def read() -> None:
            value: bool | None = None
            error: BaseException | None = None
            try:
                value = ask(results)
            except Exception as exc:  # noqa: BLE001 - handed to the waiting run
                error = exc
            with suppress(RuntimeError):  # the loop closed first: nobody waits any more
                loop.call_soon_threadsafe(_settle_future, answered, value, error)

        threading.Thread(target=read, name="canary-question", daemon=True).start()
        stopped = asyncio.ensure_future(self._control.stop_event.wait())
        waits: set[asyncio.Future[Any]] = {answered, stopped}
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopped.cancel()
        return answered.result() if answered.done() else False

    async def _settle(self) -> None:
        expected = self._expected
        if self._open.is_set() or len(self._results) < expected or self._control.stopping:
            return
        results = self._results
        # an order a precondition skipped was not sent: it says nothing of the run's sending
        bad = [r for r in results if r.outcome not in SUCCESS and r.outcome is not Outcome.SKIPPED]
        outcomes = dict(Counter(r.outcome.value for r in results))
        if not bad:
            log.info("canary_passed", orders=len(results), outcomes=outcomes)
            self._open.set()
            return
        if expected < self.size:  # the input ran out first: no "rest" to hold back
            log.info("canary_was_the_whole_input", orders=len(results), outcomes=outcomes)
            self._open.set()
            return
        if self._ask is not None and await self._question(results):
            log.warning("canary_accepted", orders=len(results), outcomes=outcomes)
            self._open.set()
            return
        if self._control.stopping:  # stopped while the question was asked: that is the end
            return
        named = ", ".join(f"{r.order_id} {r.outcome.value}" for r in bad[:5])
        self._control.stop_by_limit(
            f"canary: {len(bad)} of the first {len(results)} orders did not end cancelled or "
            f"already_cancelled ({named}); the rest were not sent: look at them "
            "(cancel-orders report), then run the same command again to go on"
        )
