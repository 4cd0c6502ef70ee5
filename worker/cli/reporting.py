"""`report` (from the ledger, or from the results stream) and `check` (each order's outcome
predicted with GET requests, nothing cancelled)."""

from __future__ import annotations

import argparse
import sys
from contextlib import ExitStack
from typing import TextIO

from worker.cli.common import say, settings_from
from worker.cli.flags import REPORT_KEYS, RUN_GROUPS, keys_of
from worker.cli.inputs import source_from
from worker.domain.errors import ConfigError
from worker.domain.models import CHECKED_FAILING
from worker.ledger import Ledger, ledger_at
from worker.reports.report import open_output, write_report


def cmd_report(args: argparse.Namespace) -> int:
    """`report`: table, json, csv or html, from the ledger (or the results stream)."""
    settings = settings_from(args, REPORT_KEYS)
    with ExitStack() as stack:
        out = open_output(args.output, stack)
        if args.redis_url or args.results_stream:
            from worker.cli.queue import cmd_report_stream  # noqa: PLC0415

            return cmd_report_stream(settings, args.format, args.outcome, out)
        ledger = ledger_at(settings.ledger, readonly=True)
        stack.callback(ledger.close)
        if args.run:
            _run_report(ledger, args, out)
        else:
            write_report(ledger, out, args.format, args.outcome)
    if args.output is not None:
        print(f"Report written to {args.output}", file=sys.stderr)
    return 0


def _run_report(ledger: Ledger, args: argparse.Namespace, out: TextIO) -> None:
    """`report --run ID`: that run and the orders it dealt with."""
    from worker.reports.history import write_run_report  # noqa: PLC0415

    audit = ledger.audit()
    run = audit.run(args.run)
    if run is None:
        raise ConfigError(f"{ledger.path}: no run {args.run!r} (cancel-orders runs lists them)")
    if args.format == "html":
        raise ConfigError("report --run: table, json or csv (the HTML report covers the ledger)")
    write_run_report(audit, run, out, args.format, args.outcome)


def cmd_check(args: argparse.Namespace) -> int:
    from worker.runs.check import run_check  # noqa: PLC0415

    settings = settings_from(args, keys_of(RUN_GROUPS))
    settings.require_credentials()
    with ExitStack() as stack:
        source = source_from(args, settings, stack)
        source.scan()
        out = open_output(args.output, stack)
        bar = sys.stderr.isatty()
        code = run_check(settings, source, out, args.format, args.outcome, progress_bar=bar)
    said = "done" if code == 0 else CHECKED_FAILING
    say(sys.stderr, f"cancel-orders: {said}\n")  # the last line, as every run's
    return code
