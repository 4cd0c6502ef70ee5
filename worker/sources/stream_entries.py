"""The entries one consumer holds on a Redis stream: the pool's source in queue mode.

Entries are read with ``XREADGROUP`` (at most twice ``concurrency`` held at a time), claimed
with ``XAUTOCLAIM`` from consumers that stopped refreshing them, taken back when Redis counts
them as this consumer's but their reply was lost, and kept fresh while held, so that retries,
backoff and the rate limiter never make a live consumer's entries look abandoned. An entry is
checked to be still this consumer's when a worker takes it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from functools import partial
from typing import Any

import structlog

from worker.domain.models import Outcome, Result
from worker.pipeline.control import RunControl
from worker.pipeline.order import OrderState
from worker.queue.streams import Streams, patiently
from worker.runtime.clock import Clock, SystemClock
from worker.settings import Settings
from worker.sources import IdValidator

log = structlog.get_logger(__name__)

READ_BLOCK_MS = 1000
EMPTY_CHECK_S = 0.5
TAKE_BACK_S = 2.0  # how often (and after how long idle) this consumer's own pending entries that
# nothing here holds are taken back


@dataclass(slots=True)
class Entry:
    """One request entry held by this consumer."""

    entry_id: str
    order_id: str
    deliveries: int
    earlier: bool = False  # delivered to this name before this process started: maybe sent


Finish = Callable[[str, str, Result | None, str], Awaitable[None]]  # entry, order, result, dead


class StreamEntries:
    """Reads, claims, takes back and refreshes the entries of one consumer; each order it gives
    carries its entry's ID (``OrderState.handle``)."""

    def __init__(
        self,
        settings: Settings,
        streams: Streams,
        control: RunControl,
        finish: Finish,
        *,
        exit_when_empty: bool = False,
        clock: Clock | None = None,
    ) -> None:
        self._clock = clock or SystemClock()  # its loops' pauses run on it
        self._settings = settings
        self._streams = streams
        self._names = streams.names
        self._control = control
        self._finish = finish
        self._exit_when_empty = exit_when_empty
        self._validator = IdValidator(settings.id_pattern)
        self.held: dict[str, Entry] = {}
        self._queue: asyncio.Queue[Entry | None] = asyncio.Queue()
        self._space = asyncio.Event()
        self._limit = settings.concurrency * 2
        self._started = self._clock.monotonic()

    def _stopping(self) -> bool:
        return self._control.stopping

    def helpers(self) -> list[Coroutine[Any, Any, None]]:
        """Reading, claiming, taking back; with exit_when_empty, watching for an empty group."""
        tasks = [self._read(), self._claim(), self._take_back()]
        if self._exit_when_empty:
            tasks.append(self._until_empty())
        return tasks

    def keepers(self) -> list[Coroutine[Any, Any, None]]:
        """Refreshing the held entries, until the requests in flight are drained."""
        return [self.refresh()]

    def ownership(self) -> Callable[[OrderState], Awaitable[bool]]:
        """Each order's entry is checked to be still this consumer's."""
        return self._still_mine

    async def _still_mine(self, state: OrderState) -> bool:
        entry_id = state.handle
        if entry_id not in self.held:
            return False
        checked = await patiently(
            partial(self._streams.owned, entry_id, state.order_id),
            self._stopping,
            "ownership",
        )
        return checked is not None and checked[0]

    def left(self) -> None:
        """A stream's end is never known: more entries may come."""

    async def take(self) -> OrderState | None:
        """The next entry still this consumer's; one already final is acknowledged here."""
        while not self._control.stopping:
            entry = await self._queue.get()
            if entry is None:  # the group is empty: every worker is told
                self._queue.put_nowait(None)
                return None
            if entry.entry_id not in self.held:  # found another's by a refresh meanwhile
                log.info("entry_not_ours", entry_id=entry.entry_id, order_id=entry.order_id)
                continue
            checked = await patiently(
                partial(self._streams.owned, entry.entry_id, entry.order_id),
                self._stopping,
                "ownership",
            )
            if checked is None:
                return None
            owned, final = checked
            if not owned:
                log.info("entry_not_ours", entry_id=entry.entry_id, order_id=entry.order_id)
                self.release(entry.entry_id)
                continue
            if final:  # a second entry for an order already final: acknowledged, not sent again
                log.info("order_already_final", order_id=entry.order_id, outcome=final)
                await self._finish(entry.entry_id, entry.order_id, None, "")
                continue
            # delivered before: the consumer that had it may have sent the DELETE before dying
            verify = entry.deliveries > 1 or entry.earlier
            return OrderState(entry.order_id, handle=entry.entry_id, verify=verify)
        return None

    def release(self, entry_id: str) -> None:
        """No longer held here (finished, or another consumer's)."""
        self.held.pop(entry_id, None)
        self._space.set()

    async def _until_empty(self) -> None:
        """Tell the workers there is no more once the whole group is empty."""
        while True:  # polled: Redis tells no one when the group empties
            if await self._empty():
                break
            await self._clock.sleep(EMPTY_CHECK_S)
        log.info("queue_empty", consumer=self._names.consumer)
        self._queue.put_nowait(None)

    async def _empty(self) -> bool:
        """Nothing held here, and nothing new or pending in the whole group."""
        if self.held or not self._queue.empty():
            return False
        n = self._names

        async def group() -> dict[str, Any] | None:
            groups = await self._streams.redis.xinfo_groups(n.stream)
            return next((g for g in groups if g["name"] == n.group), None)

        info = await patiently(group, self._stopping, "group info")
        if info is None or int(info["pending"]) > 0:
            return False
        lag = info.get("lag")
        if lag is not None:
            return int(lag) == 0
        stream = await patiently(
            partial(self._streams.redis.xinfo_stream, n.stream), self._stopping, "stream info"
        )
        return stream is not None and info["last-delivered-id"] == stream["last-generated-id"]

    async def _read(self) -> None:
        n = self._names
        while not self._control.stopping:
            room = self._limit - len(self.held)
            if room <= 0:
                self._space.clear()
                await self._space.wait()
                continue

            async def read(count: int = room) -> Any:
                return await self._streams.redis.xreadgroup(
                    n.group, n.consumer, {n.stream: ">"}, count=count, block=READ_BLOCK_MS
                )

            answer = await patiently(read, self._stopping, "read")
            for _stream, entries in answer or []:
                for entry_id, fields in entries:
                    await self._admit(Entry(entry_id, (fields or {}).get("order_id", ""), 1))

    async def _claim(self) -> None:
        """Claim entries idle longer than claim_idle (their consumer stopped refreshing them)."""
        n = self._names
        idle_ms = int(self._settings.claim_idle * 1000)
        every = min(max(self._settings.claim_idle / 4, 0.2), 15.0)
        while not self._control.stopping:
            start = "0-0"
            while not self._control.stopping and len(self.held) < self._limit:
                room = self._limit - len(self.held)

                async def claim(first: str = start, count: int = room) -> Any:
                    return await self._streams.redis.xautoclaim(
                        n.stream, n.group, n.consumer, idle_ms, first, count=count
                    )

                answer = await patiently(claim, self._stopping, "claim")
                if not answer:
                    break
                start, entries = answer[0], answer[1]
                for entry_id, fields in entries:
                    if fields is None or entry_id in self.held:
                        continue
                    deliveries = await self._deliveries(entry_id)
                    log.info("entry_claimed", entry_id=entry_id, deliveries=deliveries)
                    await self._admit(Entry(entry_id, fields.get("order_id", ""), deliveries))
                if start == "0-0":
                    break
            await self._clock.sleep(every)

    async def _take_back(self) -> None:
        """Take back the entries Redis counts as this consumer's that nothing here holds.

        A read or a claim whose reply is lost with its connection has still delivered its
        entries to this consumer, and redis-py sends the command again on a new connection, so
        the first reply's entries are never seen; a process restarted under the same name finds
        its predecessor's entries in its list. Left alone, they would wait ``claim_idle`` for
        a claim (and ``--exit-when-empty`` with them).
        """
        n = self._names
        redis = self._streams.redis
        mine = partial(
            redis.xpending_range,
            n.stream,
            n.group,
            "-",
            "+",
            self._limit * 4,
            consumername=n.consumer,
            idle=int(TAKE_BACK_S * 1000),
        )
        while not self._control.stopping:
            await self._clock.sleep(TAKE_BACK_S)
            for row in await patiently(mine, self._stopping, "own pending") or []:
                entry_id = str(row["message_id"])
                if entry_id in self.held:
                    continue
                found = await patiently(
                    partial(redis.xrange, n.stream, entry_id, entry_id), self._stopping, "entry"
                )
                if not found:
                    continue  # deleted from the stream: the claim loop drops it from the list
                deliveries = int(row["times_delivered"])
                idle_s = int(row["time_since_delivered"]) / 1000
                earlier = idle_s > self._clock.monotonic() - self._started
                log.info("entry_taken_back", entry_id=entry_id, deliveries=deliveries)
                order_id = str((found[0][1] or {}).get("order_id", ""))
                await self._admit(Entry(entry_id, order_id, deliveries, earlier))

    async def _deliveries(self, entry_id: str) -> int:
        n = self._names
        pending = partial(
            self._streams.redis.xpending_range, n.stream, n.group, entry_id, entry_id, 1
        )
        found = await patiently(pending, self._stopping, "pending")
        return int(found[0]["times_delivered"]) if found else 1

    async def refresh(self) -> None:
        """Reset the idle time of every held entry that is still this consumer's (until
        cancelled, after the requests in flight are drained)."""
        every = max(self._settings.claim_idle / 3, 0.1)
        while True:
            await self._clock.sleep(every)
            held = list(self.held)
            for start in range(0, len(held), 200):
                chunk = held[start : start + 200]
                lost = await patiently(partial(self._streams.refresh, chunk), _never, "refresh")
                for entry_id in lost or []:
                    log.warning("entry_taken_by_another_consumer", entry_id=entry_id)
                    self.release(entry_id)

    async def _admit(self, entry: Entry) -> None:
        """Hold an entry: dead-letter it, record it invalid, or queue it for a worker."""
        if entry.entry_id in self.held:
            return
        self.held[entry.entry_id] = entry
        s = self._settings
        if entry.deliveries > s.max_deliveries:
            reason = f"delivered {entry.deliveries} times (max_deliveries {s.max_deliveries})"
            code = "MAX_DELIVERIES"
            result = Result(entry.order_id, Outcome.RETRYABLE_FAILED, None, code, reason)
            await self._finish(entry.entry_id, entry.order_id, result, reason)
            return
        _, invalid = self._validator.check(entry.order_id, f"entry {entry.entry_id}")
        if invalid is not None:
            garbled = "\ufffd" in entry.order_id
            reason = "the entry is not valid UTF-8" if garbled else ""
            await self._finish(entry.entry_id, entry.order_id, invalid, reason)
            return
        self._queue.put_nowait(entry)


def _never() -> bool:
    return False
