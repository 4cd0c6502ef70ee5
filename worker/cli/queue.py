"""`enqueue`, `consume`, `redrive`, and `report` from the results stream (their work is done in
``worker.queue``; here: settings, output, exit statuses)."""

from __future__ import annotations

import argparse
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path
from typing import TextIO

import structlog

from worker.cli.common import confirm, say, settings_from
from worker.cli.flags import CONSUME_GROUPS, ENQUEUE_GROUPS, keys_of
from worker.cli.inputs import source_from
from worker.cli.run import ending
from worker.domain.models import Result, RunReport
from worker.ledger import SqliteLedger
from worker.pipeline.control import with_signals
from worker.queue.connection import names, open_redis_problem, streams_for
from worker.queue.results import read_results
from worker.reports.report import sent_lines, write_report
from worker.runs.consumer import Consumer
from worker.runs.enqueue import enqueue, redrive
from worker.runs.lifecycle import cap
from worker.runtime import loop as event_loop
from worker.settings import Settings, safe_url
from worker.sinks.ledger_copy import check_ledger
from worker.sources import OrderInput

log = structlog.get_logger(__name__)

# -- enqueue ----------------------------------------------------------------------------------


def cmd_enqueue(settings: Settings, source: OrderInput, approved: set[str] | None) -> int:
    """`enqueue`: 0 when every ID was valid, 1 when some were rejected."""

    async def main() -> tuple[int, int, int]:
        streams = streams_for(settings)
        try:
            return await enqueue(streams, source, approved)
        finally:
            await streams.close()

    enqueued, invalid, duplicates = event_loop.run(main())
    print(
        f"Enqueued {enqueued} orders to {settings.stream}; rejected as invalid: {invalid}"
        + (f"; duplicates skipped: {duplicates}" if duplicates else "")
    )
    return 1 if invalid else 0


# -- consume ----------------------------------------------------------------------------------


def cmd_consume(settings: Settings, args: argparse.Namespace) -> int:
    """`consume`: until SIGTERM/SIGINT/SIGHUP (143/130/129), a fatal answer (3), or empty (0/1)."""
    settings.require_target()
    settings.require_credentials()
    check_ledger(settings, getattr(args, "ledger", None) is not None)
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
    say(sys.stderr, f"cancel-orders: {ending(report)}\n")  # the last line, as every run's
    return report.exit_code


def render_consumed(report: RunReport, settings: Settings) -> str:
    """The end-of-consume summary for a person."""
    data = report.as_dict()
    head = f"Consumer {names(settings).consumer}: exit {report.exit_code}"
    lines = [head + (f" ({report.reason})" if report.reason else "")]
    outcomes = data["outcomes"]
    assert isinstance(outcomes, dict)
    lines.extend(sent_lines(data, outcomes))
    codes = data.get("error_codes")
    if isinstance(codes, dict) and codes:
        lines.append("  error codes: " + ", ".join(f"{c} {n}" for c, n in codes.items()))
    where = f"--results-stream {settings.results_stream}"
    steps = [
        f"  {name} orders: cancel-orders report {where} --outcome {name}"
        for name in ("rejected", "not_found", "invalid", "skipped", "retryable_failed")
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
        try:
            return await redrive(streams)
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
            return [r async for r in read_results(streams)]
        finally:
            await streams.close()

    results = event_loop.run(read_all())
    with tempfile.TemporaryDirectory(prefix="cancel-orders-report-") as folder:
        ledger = SqliteLedger(Path(folder) / "results.sqlite")
        try:
            ledger.record(results, "results-stream")
            write_report(ledger, out, fmt, outcome, f"results stream {settings.results_stream}")
        finally:
            ledger.close()
    return 0


def run_enqueue(args: argparse.Namespace) -> int:
    settings = settings_from(args, keys_of(ENQUEUE_GROUPS))
    with ExitStack() as stack:
        source = source_from(args, settings, stack)
        source.scan()
        valid: set[str] = set()
        invalid = 0
        for batch in source.batches(1000):
            valid.update(order_id for order_id, bad in batch if bad is None)
            invalid += sum(bad is not None for _, bad in batch)
        cap(len(valid), settings)
        where = f"{settings.stream} on {safe_url(settings.redis_url or '')}"
        if args.dry_run:
            print(f"Would enqueue {len(valid)} orders to {where}; invalid: {invalid}; nothing sent")
            return 1 if invalid else 0
        if not args.yes and valid:
            confirm(
                f"About to enqueue {len(valid)} orders to {where} (invalid, not enqueued: "
                f"{invalid}); the consumers of the group will cancel them.\n"
                "A cancellation cannot be undone. Type 'yes' to go on: "
            )
        return cmd_enqueue(settings, source, valid)


def run_consume(args: argparse.Namespace) -> int:
    return cmd_consume(settings_from(args, keys_of(CONSUME_GROUPS)), args)


def run_redrive(args: argparse.Namespace) -> int:
    return cmd_redrive(settings_from(args, keys_of(ENQUEUE_GROUPS)))
