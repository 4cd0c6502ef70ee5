"""`enqueue`, `consume`, `redrive`, and `report` from the results stream."""

from __future__ import annotations

import argparse
import socket
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import urlsplit

import structlog
from redis.exceptions import ResponseError

from worker.domain.errors import ConfigError
from worker.domain.models import Outcome, Result, RunReport
from worker.ledger import Ledger
from worker.pipeline.control import with_signals
from worker.queue import streams as streams_module
from worker.queue.consumer import Consumer
from worker.queue.streams import Names, Streams, patiently
from worker.reports.report import write_report
from worker.runtime import loop as event_loop
from worker.settings import Settings, is_loopback, safe_url
from worker.sources import OrderSource

log = structlog.get_logger(__name__)

ENQUEUE_BATCH = 500
READ_CHUNK = 1000


def names(settings: Settings) -> Names:
    """The stream names of these settings; the consumer defaults to the host name."""
    stream, group, results, dead = settings.queue_names
    return Names(
        stream=stream,
        group=group,
        consumer=settings.consumer or socket.gethostname(),
        results=results,
        dead=dead,
    )


def streams_for(settings: Settings) -> Streams:
    """A connection to the Redis of these settings; ConfigError without a URL."""
    if not settings.redis_url:
        raise ConfigError("missing setting: MOUVONE_REDIS_URL (--redis-url)")
    streams_module.PATIENCE_S = settings.outage_timeout  # Redis gets the API's patience
    return Streams(settings.redis_url, names(settings))


# -- enqueue ----------------------------------------------------------------------------------


async def enqueue(streams: Streams, source: OrderSource) -> tuple[int, int, int]:
    """Append each valid ID once (field ``order_id``); (enqueued, invalid, duplicates).

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

        answers = await patiently(send, lambda: False, "enqueue")
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


def cmd_enqueue(settings: Settings, source: OrderSource) -> int:
    """`enqueue`: 0 when every ID was valid, 1 when some were rejected."""

    async def main() -> tuple[int, int, int]:
        streams = streams_for(settings)
        try:
            return await enqueue(streams, source)
        finally:
            await streams.close()

    enqueued, invalid, duplicates = event_loop.run(main())
    print(
        f"Enqueued {enqueued} orders to {settings.stream}; rejected as invalid: {invalid}"
        + (f"; duplicates skipped: {duplicates}" if duplicates else "")
    )
    return 1 if invalid else 0


# -- consume ----------------------------------------------------------------------------------


def open_redis_problem(url: str) -> str | None:
    """Why a Redis URL lets others steer the consumers, or None: no password to a host that is
    not loopback (whoever reaches it can enqueue orders to cancel with these credentials)."""
    parts = urlsplit(url)
    if parts.scheme == "unix" or is_loopback(parts.hostname or "localhost"):
        return None
    if not parts.password:
        return (
            "no password: whoever reaches this Redis can enqueue orders to cancel with these "
            "credentials; use an ACL user (redis://USER:PASSWORD@...) and rediss:// (TLS)"
        )
    return None


def cmd_consume(settings: Settings, args: argparse.Namespace) -> int:
    """`consume`: until SIGTERM/SIGINT (143/130), a fatal answer (3), or empty (0/1)."""
    settings.require_target()
    settings.require_credentials()
    if settings.redis_url and (problem := open_redis_problem(settings.redis_url)):
        log.warning("redis_open_to_others", url=safe_url(settings.redis_url), detail=problem)

    async def main() -> RunReport:
        streams = streams_for(settings)
        consumer = Consumer(settings, streams, exit_when_empty=args.exit_when_empty)
        try:
            return await with_signals(consumer.control, consumer.run())
        finally:
            await streams.close()

    report = event_loop.run(main())
    sys.stdout.write(render_consumed(report, settings))
    if report.reason and report.exit_code == 3:
        print(f"cancel-orders: {report.reason}", file=sys.stderr)
    return report.exit_code


def render_consumed(report: RunReport, settings: Settings) -> str:
    """The end-of-consume summary for a person."""
    data = report.as_dict()
    head = f"Consumer {names(settings).consumer}: exit {report.exit_code}"
    lines = [head + (f" ({report.reason})" if report.reason else "")]
    outcomes = data["outcomes"]
    assert isinstance(outcomes, dict)
    lines.extend(f"  {name:<20}{count:>10}" for name, count in outcomes.items() if count)
    lines.append(
        f"  requests             {data['requests']:>10}   in {data['elapsed_s']} s"
        f" ({data['rate_per_s']}/s)"
    )
    codes = data.get("error_codes")
    if isinstance(codes, dict) and codes:
        lines.append("  error codes: " + ", ".join(f"{c} {n}" for c, n in codes.items()))
    where = f"--results-stream {settings.results_stream}"
    steps = [
        f"  {name} orders: cancel-orders report {where} --outcome {name}"
        for name in ("rejected", "not_found", "invalid", "retryable_failed")
        if outcomes.get(name)
    ]
    if outcomes.get("retryable_failed"):
        steps.append(
            f"  to enqueue them again: cancel-orders redrive (from {settings.dead_letter_stream})"
        )
    return "\n".join([*lines, *(["next:", *steps] if steps else [])]) + "\n"


# -- redrive ----------------------------------------------------------------------------------


def cmd_redrive(settings: Settings) -> int:
    """`redrive`: every dead letter back to the requests stream."""

    async def main() -> int:
        streams = streams_for(settings)
        moved = 0
        try:
            await streams.ping()
            n = streams.names
            # Only the dead letters there now: consumers may dead-letter again meanwhile, and
            # those wait for the next redrive instead of going round for ever.
            last: Any = await streams.redis.xrevrange(n.dead, "+", "-", count=1)
            if not last:
                return 0
            start, end = "-", last[0][0]
            while True:
                chunk: Any = await streams.redis.xrange(n.dead, start, end, count=READ_CHUNK)
                if not chunk:
                    return moved
                for entry_id, _fields in chunk:
                    moved += int(
                        await streams.redrive_script(keys=[n.dead, n.stream], args=[entry_id])
                    )
                start = "(" + chunk[-1][0]
        finally:
            await streams.close()

    moved = event_loop.run(main())
    print(f"Moved {moved} dead letters from {settings.dead_letter_stream} to {settings.stream}")
    return 0


# -- report -----------------------------------------------------------------------------------


def cmd_report_stream(settings: Settings, fmt: str, outcome: str | None, out: TextIO) -> int:
    """`report --results-stream`: the results stream in the ledger report's formats (the
    latest result of each order counts)."""

    async def read_all() -> list[Result]:
        streams = streams_for(settings)
        try:
            await streams.ping()
            return [r async for r in _results(streams)]
        finally:
            await streams.close()

    results = event_loop.run(read_all())
    with tempfile.TemporaryDirectory(prefix="cancel-orders-report-") as folder:
        ledger = Ledger(Path(folder) / "results.sqlite")
        try:
            ledger.record(results, "results-stream")
            write_report(ledger, out, fmt, outcome, f"results stream {settings.results_stream}")
        finally:
            ledger.close()
    return 0


async def _results(streams: Streams) -> AsyncIterator[Result]:
    start = "-"
    while True:
        chunk: Any = await streams.redis.xrange(streams.names.results, start, "+", count=READ_CHUNK)
        for _entry_id, fields in chunk:
            yield _result(fields)
        if len(chunk) < READ_CHUNK:
            return
        start = "(" + chunk[-1][0]


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
