"""Out of the results stream: every result, for `report --results-stream`."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from worker.domain.models import Outcome, Result
from worker.queue.streams import Streams

READ_CHUNK = 1000


async def _entries(streams: Streams) -> AsyncIterator[dict[str, str]]:
    """The fields of every entry of the results stream, oldest first, a chunk at a time."""
    start = "-"
    while True:
        chunk: Any = await streams.redis.xrange(streams.names.results, start, "+", count=READ_CHUNK)
        for _entry_id, fields in chunk:
            yield fields
        if len(chunk) < READ_CHUNK:
            return
        start = "(" + chunk[-1][0]


async def read_results(streams: Streams) -> AsyncIterator[Result]:
    """Every result of the stream, oldest first."""
    async for fields in _entries(streams):
        yield _result(fields)


def _result(fields: dict[str, str]) -> Result:
    status = fields.get("http_status") or ""
    try:
        outcome = Outcome(fields.get("outcome", ""))
    except ValueError:
        outcome = Outcome.PENDING
    return Result(
        fields.get("order_id", ""),
        outcome,
        int(status) if status.isdigit() and len(status) == 3 else None,
        fields.get("error_code") or None,
        fields.get("message") or None,
        _count(fields.get("attempts")),
    )


def _count(text: str | None) -> int:
    """A count field of the results stream; 0 when it is missing or malformed."""
    return int(text) if text and text.isdigit() and len(text) < 10 else 0


async def read_attempts(streams: Streams) -> AsyncIterator[dict[str, Any]]:
    """Every attempt the result entries carry (their ``attempt_log``), oldest first."""
    async for fields in _entries(streams):
        for attempt in _attempts(fields.get("attempt_log")):
            yield attempt


def _attempts(text: str | None) -> list[dict[str, Any]]:
    try:
        found = json.loads(text or "[]")
    except ValueError:
        return []
    return [a for a in found if isinstance(a, dict)] if isinstance(found, list) else []
