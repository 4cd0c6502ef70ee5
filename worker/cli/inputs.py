"""Where a command's orders come from: an input file or standard input (spooled when it cannot
be read twice), the ledger (`retry`), or a selection (`run --select`); and the --max-orders
cap."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path

from worker.cli.filters import FILTER_DESTS
from worker.domain.errors import ConfigError
from worker.domain.location import Location
from worker.ledger import ledger_at, require_ledger
from worker.runtime import loop as event_loop
from worker.settings import Settings
from worker.sources import IdValidator, OrderInput
from worker.sources.csv_file import CsvSource, needs_spooling, spool_stdin
from worker.sources.ledger_source import LedgerSource
from worker.sources.plan import PlanSource, Seal
from worker.sources.plan import load as load_plan


def source_from(args: argparse.Namespace, settings: Settings, stack: ExitStack) -> OrderInput:
    validator = IdValidator(settings.id_pattern)
    if args.command == "apply":
        settings.require_target()
        seal = Seal(settings.api_url, args.expect_digest, settings.signing_key)
        return PlanSource.of(load_plan(Path(args.plan), seal), validator)
    if args.command == "retry":
        require_ledger(settings.ledger)
        if not args.force:
            _refuse_retry_of_unfinished_input(settings.ledger)
        return LedgerSource(settings.ledger, validator)
    if getattr(args, "select", False):
        return _selected(args, settings, stack, validator)
    if args.input is None:
        raise ConfigError("INPUT is missing: a CSV file, - for standard input, or --select")
    if any(getattr(args, name, None) for name in FILTER_DESTS):
        raise ConfigError("selection filters need --select")
    given = Path(args.input)
    if args.input == "-" or needs_spooling(given):  # read once: counted and checked from a copy
        spooled = spool_stdin(source=None if args.input == "-" else given)
        stack.callback(lambda: spooled.unlink(missing_ok=True))
        return CsvSource(
            spooled,
            validator,
            args.column,
            name="<stdin>" if args.input == "-" else args.input,
            encoding=settings.encoding,
        )
    return CsvSource(given, validator, args.column, encoding=settings.encoding)


def _selected(
    args: argparse.Namespace, settings: Settings, stack: ExitStack, validator: IdValidator
) -> OrderInput:
    """`run --select`: the whole selection first, into a private temporary file."""
    from worker.cli.selecting import filters_from, render_selection, select_into  # noqa: PLC0415

    if args.input is not None:
        raise ConfigError("give either INPUT or --select, not both")
    settings.require_credentials()
    filters = filters_from(args)
    folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="cancel-orders-")))
    path = folder / "selection.csv"
    bar = sys.stderr.isatty() and not args.no_progress
    with path.open("w", encoding="utf-8", newline="") as out:
        found = event_loop.run(select_into(settings, filters, out, progress_bar=bar))
    print(render_selection(found), file=sys.stderr)
    return CsvSource(path, validator, None, name="<selection>")


def last_run(path: Location) -> tuple[dict[str, object] | None, dict[str, object]]:
    """The ledger's last run, and its summary as recorded ({} when none)."""
    ledger = ledger_at(path, readonly=True)
    try:
        last = ledger.last_run()
    finally:
        ledger.close()
    summary = json.loads(str(last["summary"])) if last and last.get("summary") else {}
    return last, summary if isinstance(summary, dict) else {}


def _refuse_retry_of_unfinished_input(path: Location) -> None:
    """`retry` sends only what the ledger holds: after a run that stopped before reading all of
    its input, it would leave the rest unsent while the report showed nothing pending."""
    last, summary = last_run(path)
    if last is None or last.get("command") == "retry":
        return
    not_read = summary.get("not_read", 0)
    if last.get("finished_at") is not None and not not_read:
        return
    what = (
        f"{not_read} IDs of its input not read"
        if not_read
        else "it never ended: a crash, or it is running still (`control status`)"
    )
    resume = summary.get("resume")
    raise ConfigError(
        f"the last run {last['run_id']} stopped before reading all of its input ({what}): "
        f"resume it with the same command{f' ({resume})' if resume else ''}; retry would leave "
        "the rest unsent (--force to retry anyway)"
    )
