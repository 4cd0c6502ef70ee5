"""`runs`, `history`, `audit` and `prune`: the ledger's runs and its attempt log (or, with
--redis-url, the attempts the results stream's entries carry)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable, Iterator
from contextlib import ExitStack
from datetime import UTC, datetime, timedelta
from typing import Any

from worker.cli.common import say, settings_from
from worker.cli.flags import REPORT_KEYS
from worker.domain.errors import ConfigError
from worker.ledger import ledger_at, require_ledger
from worker.reports.history import write_attempts, write_history, write_runs
from worker.reports.report import open_output
from worker.runtime import loop as event_loop
from worker.runtime.clock import iso_utc
from worker.settings import Settings
from worker.settings.values import DurationTooLongError, duration_s


def cmd_runs(args: argparse.Namespace) -> int:
    """`runs`: the ledger's runs, newest first."""
    settings = settings_from(args, REPORT_KEYS)
    with ExitStack() as stack:
        ledger = ledger_at(settings.ledger, readonly=True)
        stack.callback(ledger.close)
        write_runs(ledger.audit().runs(), open_output(args.output, stack), args.format)
    return 0


def cmd_history(args: argparse.Namespace) -> int:
    """`history ORDER_ID`: every attempt on one order, across all runs."""
    settings = settings_from(args, REPORT_KEYS)
    order_id = args.order_id.strip()
    with ExitStack() as stack:
        out = open_output(args.output, stack)
        if settings.redis_url:
            attempts = [a for a in _stream_attempts(settings) if a.get("order_id") == order_id]
            write_history(order_id, None, attempts, out, args.format)
            return 0 if attempts else 1
        ledger = ledger_at(settings.ledger, readonly=True)
        stack.callback(ledger.close)
        current = next((r for r in ledger.rows_of([order_id])), None)
        rows = ledger.audit().history(order_id)
        write_history(order_id, current, rows, out, args.format)
    return 0 if current is not None or rows else 1


def cmd_audit(args: argparse.Namespace) -> int:
    """`audit`: the attempt log as JSON lines or CSV, from --since, of one --run."""
    settings = settings_from(args, REPORT_KEYS)
    since = _since(args.since) if args.since else None
    with ExitStack() as stack:
        out = open_output(args.output, stack)
        if settings.redis_url:
            rows: Iterable[dict[str, Any]] = _matching(_stream_attempts(settings), since, args.run)
        else:
            ledger = ledger_at(settings.ledger, readonly=True)
            stack.callback(ledger.close)
            rows = ledger.audit().attempts(since, args.run)
        count = write_attempts(rows, out, args.format)
    if args.output is not None:
        say(sys.stderr, f"{count} attempts written to {args.output}\n")
    return 0


def cmd_prune(args: argparse.Namespace) -> int:
    """`prune --older-than DURATION`: delete older attempt rows; orders and runs stay."""
    settings = settings_from(args, REPORT_KEYS)
    try:
        age = duration_s(args.older_than)
    except ValueError as exc:
        raise ConfigError(f"--older-than: {exc}") from None
    require_ledger(settings.ledger)
    before = iso_utc(datetime.now(UTC) - timedelta(seconds=age))
    ledger = ledger_at(settings.ledger)
    try:
        gone = ledger.audit().prune(before)
    finally:
        ledger.close()
    say(sys.stdout, f"{gone} attempt rows sent before {before} deleted from {settings.ledger}\n")
    return 0


def _since(text: str) -> str:
    """--since: an ISO date or time (local without a zone), or a duration back from now."""
    try:
        return iso_utc(datetime.now(UTC) - timedelta(seconds=duration_s(text)))
    except DurationTooLongError as exc:
        raise ConfigError(f"--since: {exc}") from None
    except ValueError:
        pass
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ConfigError(
            f"--since: {text!r} is not a date (2026-11-01), a time (2026-11-01T06:00) or a "
            "duration back from now (24h, 7d)"
        ) from None
    return iso_utc(when if when.tzinfo is not None else when.astimezone())


def _matching(
    rows: Iterable[dict[str, Any]], since: str | None, run_id: str | None
) -> Iterator[dict[str, Any]]:
    for row in rows:
        if since is not None and str(row.get("sent_at", "")) < since:
            continue
        if run_id is not None and row.get("run_id") != run_id:
            continue
        yield row


def _stream_attempts(settings: Settings) -> list[dict[str, Any]]:
    """The attempts the results stream's entries carry (queue mode)."""
    from worker.queue.connection import streams_for  # noqa: PLC0415 - Redis only when asked
    from worker.queue.results import read_attempts  # noqa: PLC0415

    async def read_all() -> list[dict[str, Any]]:
        streams = streams_for(settings)
        try:
            await streams.ping()
            return [a async for a in read_attempts(streams)]
        finally:
            await streams.close()

    return event_loop.run(read_all())
