"""`cancel-orders select` and `run --select`: the filters on the command line, the selection
written as CSV (to a file, standard output, or a private temporary file that feeds a run)."""

from __future__ import annotations

import argparse
import csv
import sys
import time
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

import structlog

from worker.api.connection import Reader, connect
from worker.cli.common import settings_from
from worker.cli.flags import RUN_GROUPS, keys_of
from worker.domain.errors import ConfigError
from worker.reports.report import open_output, spreadsheet_safe
from worker.runtime import loop as event_loop
from worker.runtime.clock import SystemClock
from worker.runtime.logs import flush_logs
from worker.runtime.redaction import printable
from worker.settings import Settings
from worker.sources.selection import (
    Filters,
    SelectionSummary,
    Selector,
    parse_age,
    parse_day,
)

log = structlog.get_logger(__name__)

PROGRESS_EVERY_PAGES = 20


def filters_from(args: argparse.Namespace) -> Filters:
    """The filters given on the command line; ConfigError for a bad day or age."""
    today = datetime.now(UTC).date()
    before = None
    if args.created_before:
        before = parse_day(args.created_before, "--created-before")
    elif args.older_than:
        before = parse_age(args.older_than, today)
    after = parse_day(args.created_after, "--created-after") if args.created_after else None
    if after is not None and before is not None and after >= before:
        raise ConfigError("--created-after must be a day before --created-before/--older-than")
    return Filters(
        statuses=tuple(s.strip() for s in args.status if s.strip()),
        created_after=after,
        created_before=before,
        processing_indicator=args.processing_indicator,
        carrier_code=args.carrier_code,
        transport_order_number=args.transport_order_number,
        container_number=args.container_number,
    )


async def select_into(
    settings: Settings, filters: Filters, out: TextIO, *, progress_bar: bool
) -> SelectionSummary:
    """Write ``orderId`` and one matching Master order ID a line to ``out``."""
    clock = SystemClock()
    api = connect(settings, clock)
    reader = Reader.for_settings(api, settings, clock)
    rows = csv.writer(out, lineterminator="\n")  # an ID with a comma, a quote or a newline
    rows.writerow(["orderId"])  # reads back as itself
    started = time.monotonic()
    show = _Progress(progress_bar)
    log.info("selection_started", filters=_describe(filters), base_url=settings.base_url)
    try:

        def emit(order_id: str) -> None:
            # An ID from the API, maybe hostile: a formula or an escape sequence shown as text
            # (such an ID fails the ID pattern however it is written).
            rows.writerow([spreadsheet_safe(printable(order_id))])

        selector = Selector(reader, api.client, filters, emit, show.page)
        found = await selector.run()
    finally:
        show.stop()
        await api.close()
    out.flush()
    log.info(
        "selection_summary",
        **found.as_dict(),
        requests=reader.requests,
        elapsed_s=round(time.monotonic() - started, 3),
    )
    flush_logs()
    return found


def cmd_select(args: argparse.Namespace, settings: Settings) -> int:
    """`select`: the matching order IDs as CSV."""
    settings.require_credentials()
    filters = filters_from(args)
    bar = sys.stderr.isatty() and not args.no_progress
    with ExitStack() as stack:
        out = open_output(None if args.output in (None, "-") else Path(args.output), stack)
        found = event_loop.run(select_into(settings, filters, out, progress_bar=bar))
    print(render_selection(found), file=sys.stderr)
    return 0


def render_selection(found: SelectionSummary) -> str:
    """One line for a person."""
    left_out = ", ".join(f"{n} {kind}" for kind, n in sorted(found.not_master.items()))
    text = f"Selected {found.matched} Master orders ({found.pages} pages"
    if found.total_changes:
        text += f", the total changed {found.total_changes} times while paging"
    text += ")"
    if left_out:
        text += f"; left out, not Master: {left_out}"
    return printable(text)  # the kinds are the API's words


def _describe(filters: Filters) -> dict[str, object]:
    given = {k: v for k, v in vars(filters).items() if v not in (None, ())}
    return {k: str(v) if hasattr(v, "isoformat") else v for k, v in given.items()}


class _Progress:
    """Pages read and orders matched: a spinner on a terminal, an event every 20 pages else."""

    def __init__(self, bar: bool) -> None:
        self._status = None
        if bar:
            from rich.console import Console  # noqa: PLC0415 - only on a terminal

            self._status = Console(file=sys.stderr).status("selecting")
            self._status.start()

    def page(self, found: SelectionSummary) -> None:
        if self._status is not None:
            self._status.update(f"selecting: {found.pages} pages, {found.matched} orders")
        elif found.pages % PROGRESS_EVERY_PAGES == 0:
            log.info("selection_progress", pages=found.pages, matched=found.matched)

    def stop(self) -> None:
        if self._status is not None:
            self._status.stop()
            self._status = None


def run_select(args: argparse.Namespace) -> int:
    return cmd_select(args, settings_from(args, keys_of(RUN_GROUPS)))
