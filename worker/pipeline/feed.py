"""From the producer to the workers: order IDs in batches, the producer woken once a batch."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Iterable


class Feed:
    """Order IDs from the producer to the workers. The producer adds a whole batch once fewer
    than ``low`` are waiting, so it wakes once per batch, not once per order."""

    def __init__(self, low: int) -> None:
        self._ids: deque[str] = deque()
        self._low = low
        self._closed = False
        self._available = asyncio.Event()  # an ID is waiting, or the feed is closed
        self._wanted = asyncio.Event()  # fewer than ``low`` are waiting
        self._wanted.set()
        self.epoch = 0  # counts the run's lapsed leases (a shared ledger)
        self.suspect: list[str] = []  # IDs claimed before the last lapse, not yet checked
        self.suspected = asyncio.Event()  # set while ``suspect`` holds IDs: the keeper checks

    async def put(self, ids: Iterable[str], epoch: int | None = None) -> None:
        """Add these IDs once the workers are running low; IDs claimed in an ``epoch`` before
        the current one (the lease lapsed since) are set aside to be checked first."""
        await self._wanted.wait()
        if epoch is not None and epoch != self.epoch:
            self.suspect.extend(ids)
            if self.suspect:
                self.suspected.set()
            return
        self._add(ids)

    def _add(self, ids: Iterable[str]) -> None:
        self._ids.extend(ids)
        if len(self._ids) >= self._low:
            self._wanted.clear()
        if self._ids:
            self._available.set()

    def lapse(self) -> list[str]:
        """The lease lapsed: a new epoch; every waiting ID set aside to be checked (the IDs
        to check returned; they stay in ``suspect`` until ``checked``)."""
        self.epoch += 1
        self.suspect.extend(self._ids)
        self._ids.clear()
        self._wanted.set()
        if self.suspect:
            self.suspected.set()
        return list(self.suspect)

    def checked(self, queued: list[str], mine: list[str]) -> None:
        """The set-aside IDs ``queued`` were checked: ``mine`` (still this run's) go to the
        workers, the others are dropped. Until then the feed does not end (``get``)."""
        done = set(queued)
        self.suspect = [order_id for order_id in self.suspect if order_id not in done]
        if not self.suspect:
            self.suspected.clear()
        self._add(mine)
        self._available.set()  # a worker waiting for the check looks again

    def close(self) -> None:
        """No more IDs: ``get`` returns None once the waiting ones are taken."""
        self._closed = True
        self._available.set()

    def left(self) -> int | None:
        """The IDs in hand, once the feed is closed (None before: more may come); not those set
        aside to be checked: taking one of these never waits."""
        return len(self._ids) if self._closed else None

    async def get(self) -> str | None:
        """The next ID; None when the feed is closed and empty, and no ID set aside is left to
        check (the check may give some back)."""
        ids = self._ids
        while not ids:
            if self._closed and not self.suspect:
                return None
            self._available.clear()
            await self._available.wait()
        if len(ids) <= self._low:
            self._wanted.set()
        return ids.popleft()
