"""Into the requests stream: `enqueue` appends each valid ID once; `redrive` moves the dead
letters back."""

from __future__ import annotations

import time
from typing import Any

import structlog
from redis.exceptions import ResponseError

from worker.domain.errors import StoppedByLimitError
from worker.queue import streams as streams_module
from worker.queue.streams import Streams, patiently
from worker.settings import safe_url
from worker.sources import OrderInput

log = structlog.get_logger(__name__)

ENQUEUE_BATCH = 500
# A Redis that refuses writes (maxmemory, a read-only replica): `enqueue`, which a person or a
# job waits for, gives up within this (a consumer keeps the outage timeout's patience)
ENQUEUE_PATIENCE_S = 30.0
READ_CHUNK = 1000


async def enqueue(
    streams: Streams, source: OrderInput, approved: set[str] | None = None
) -> tuple[int, int, int]:
    """Append each valid ID once (field ``order_id``); (enqueued, invalid, duplicates). With
    ``approved`` (the IDs the confirmation or --max-orders counted), an ID not among them (the
    input changed after it was counted) stops before its batch is appended (exit 4).

    Entries get explicit, increasing IDs: a batch sent again after a dropped connection (by
    redis-py's retry or by this loop) is refused by the stream for the entries that made it,
    which are then found in place, so no entry is ever added twice.
    """
    await streams.ping()
    seen: set[str] = set()
    enqueued = invalid = duplicates = 0
    next_ms = await _first_ms(streams)
    for batch in source.batches(ENQUEUE_BATCH):
        ids: list[str] = []
        for order_id, bad in batch:
            if bad is not None:
                invalid += 1
                log.warning("invalid_id", order_id=order_id, detail=bad.message)
            elif order_id in seen:
                duplicates += 1
            else:
                seen.add(order_id)
                ids.append(order_id)
        if approved is not None and not approved.issuperset(ids):
            raise StoppedByLimitError(
                f"the input holds orders not among the {len(approved)} counted before "
                f"enqueueing (it changed after it was counted): {enqueued} enqueued, the rest "
                "not; check it, then run the same command again"
            )
        if ids:
            entries = [(f"{next_ms}-{n}", order_id) for n, order_id in enumerate(ids)]
            await _append(streams, entries)
            enqueued += len(ids)
            next_ms += 1
    return enqueued, invalid, duplicates


async def _first_ms(streams: Streams) -> int:
    """A millisecond later than every entry of the stream, and not before now."""
    now_ms = int(time.time() * 1000)
    try:
        info = await streams.redis.xinfo_stream(streams.names.stream)
    except ResponseError:  # no such stream yet
        return now_ms
    last = str(info.get("last-generated-id") or "0-0")
    return max(now_ms, int(last.split("-", maxsplit=1)[0]) + 1)


async def _append(streams: Streams, entries: list[tuple[str, str]]) -> None:
    """XADD every (id, order) not already in the stream, retrying through dropped links."""
    stream = streams.names.stream
    todo = entries
    while todo:

        async def send(batch: list[tuple[str, str]] = todo) -> list[object]:
            pipe = streams.redis.pipeline(transaction=False)
            for entry_id, order_id in batch:
                pipe.xadd(stream, {"order_id": order_id}, id=entry_id)
            answers = list(await pipe.execute(raise_on_error=False))
            for answer in answers:  # only "ID equal or smaller" is looked into below
                if isinstance(answer, Exception) and "equal or smaller" not in str(answer):
                    raise answer  # a refusal that may pass is retried by patiently, else fatal
            return answers

        answers = await patiently(
            send,
            lambda: False,
            "enqueue",
            patience_s=min(ENQUEUE_PATIENCE_S, streams_module.PATIENCE_S),
            where=safe_url(streams.url),
        )
        assert answers is not None
        refused = [e for e, a in zip(todo, answers, strict=True) if isinstance(a, Exception)]
        missing = []
        for entry_id, order_id in refused:
            found: Any = await streams.redis.xrange(stream, entry_id, entry_id)
            if found and found[0][1].get("order_id") == order_id:
                continue  # it made it the first time
            missing.append(order_id)  # another producer wrote past this ID meanwhile
        if missing:
            fresh_ms = await _first_ms(streams)
            todo = [(f"{fresh_ms}-{n}", order_id) for n, order_id in enumerate(missing)]
        else:
            todo = []


async def redrive(streams: Streams) -> int:
    """Move every dead letter there now back to the requests stream; how many."""
    moved = 0
    await streams.ping()
    n = streams.names
    # Only the dead letters there now: consumers may dead-letter again meanwhile, and those
    # wait for the next redrive instead of going round for ever.
    last: Any = await streams.redis.xrevrange(n.dead, "+", "-", count=1)
    if not last:
        return 0
    start, end = "-", last[0][0]
    while True:
        chunk: Any = await streams.redis.xrange(n.dead, start, end, count=READ_CHUNK)
        if not chunk:
            return moved
        for entry_id, _fields in chunk:
            moved += int(await streams.redrive_script(keys=[n.dead, n.stream], args=[entry_id]))
        start = "(" + chunk[-1][0]
