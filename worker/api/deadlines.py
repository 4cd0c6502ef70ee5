"""The requests' timeout: one timer for every request in flight, instead of one each.

aiohttp's ``ClientTimeout(total=...)`` schedules a timer on the event loop for every request
and cancels it at the answer: about 22,000 instructions per order at thousands of orders a
second (callgrind, docs/development.md). Here each request notes its task and the moment it
times out in an insertion-ordered dict (every request has the same timeout, so the first entry
is always the next to expire) and one timer, set for that first entry, fires about once per
timeout; the tasks whose moment has passed are cancelled, and the request that awaited in
such a task turns the cancellation into its timeout, as aiohttp's own timer does.
"""

from __future__ import annotations

import asyncio


class Deadlines:
    """The moment each request in flight times out, and one timer for the earliest."""

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        # in the order they started: ``stop`` removes each, so a task's next request goes last
        self._due: dict[asyncio.Task[object], float] = {}
        self._expired: set[asyncio.Task[object]] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None  # the timer's

    def start(self) -> asyncio.Task[object] | None:
        """The current task's request starts: it times out ``timeout_s`` from now. The task
        (None outside a task: nothing to cancel, no timeout)."""
        task = asyncio.current_task()
        if task is None:
            return None
        loop = task.get_loop()
        when = loop.time() + self.timeout_s
        self._due[task] = when
        if self._timer is None or self._loop is not loop:  # (a client used by a new loop)
            self._loop = loop
            self._timer = loop.call_at(when, self._expire, loop)
        return task

    def stop(self, task: asyncio.Task[object] | None) -> bool:
        """The request of ``task`` ended; True when it ended because it timed out (its
        cancellation was this timer's: the caller takes it back with ``uncancel``)."""
        if task is None:
            return False
        self._due.pop(task, None)
        if task in self._expired:
            self._expired.discard(task)
            return True
        return False

    def _expire(self, loop: asyncio.AbstractEventLoop) -> None:
        """Cancel the tasks whose moment has passed; set the timer for the next one."""
        self._timer = None
        now = loop.time()
        due = self._due
        while due:
            task, when = next(iter(due.items()))
            if when > now:
                self._timer = loop.call_at(when, self._expire, loop)
                return
            del due[task]
            if not task.done() and task.get_loop() is loop:  # (not one a closed loop left)
                self._expired.add(task)
                task.cancel()
