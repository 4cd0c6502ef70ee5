"""The command line: ``main`` parses it, runs the command's module and turns what went wrong
into one line and an exit status. Each command lives in a module of its own (imported only
when it runs); every setting's flag comes from the settings model (``worker.cli.flags``)."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path

from worker import __version__
from worker.cli.common import Parser, add_no_progress, add_report_format, harden, say
from worker.cli.filters import add_filter_arguments
from worker.cli.flags import (
    CONSUME_GROUPS,
    ENQUEUE_GROUPS,
    REPORT_KEYS,
    RUN_GROUPS,
    add_settings,
    add_simulate_arguments,
    keys_of,
)
from worker.domain.errors import WorkerError
from worker.pipeline.steering import ACTIONS
from worker.runtime.logs import flush_logs
from worker.runtime.redaction import printable, redact
from worker.runtime.signals import Stopped, raise_on_stopping_signals

COMMANDS = {  # command -> module of worker.cli : function
    "run": "run:cmd_run",
    "retry": "run:cmd_run",
    "report": "reporting:cmd_report",
    "check": "reporting:cmd_check",
    "select": "selecting:run_select",
    "enqueue": "queue:run_enqueue",
    "consume": "queue:run_consume",
    "redrive": "queue:run_redrive",
    "simulate": "demo:simulate",
    "demo": "demo:demo",
    "control": "control:cmd_control",
    "plan": "plan:cmd_plan",
    "apply": "run:cmd_run",
    "runs": "history:cmd_runs",
    "history": "history:cmd_history",
    "audit": "history:cmd_audit",
    "prune": "history:cmd_prune",
}
RUN_SETTINGS = keys_of(RUN_GROUPS)
CONTROL_KEYS = (
    *("ledger", "claim_idle", "redis_url", "namespace", "stream", "group"),
    *("log_format", "log_level"),
)


def _add_input(parser: argparse.ArgumentParser, *, optional: bool = False) -> None:
    """INPUT and --column (INPUT optional where --select can stand in for it)."""
    parser.add_argument(
        "input",
        metavar="INPUT",
        nargs="?" if optional else None,
        help="CSV or text file, or - for standard input",
    )
    parser.add_argument("--column", metavar="NAME", help="the column holding the order IDs")


def _add_run_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="validate and report what would be sent; send nothing",
    )
    parser.add_argument(
        "--yes", action="store_true", help="send without asking (needed when not on a terminal)"
    )
    add_no_progress(parser)
    add_settings(parser, RUN_SETTINGS)


def _add_queue_commands(sub: argparse._SubParsersAction[Parser]) -> None:
    enqueue = sub.add_parser("enqueue", help="append order IDs to the Redis requests stream")
    _add_input(enqueue)
    enqueue.add_argument(
        "--dry-run", action="store_true", help="count and check what would be enqueued; do nothing"
    )
    enqueue.add_argument(
        "--yes", action="store_true", help="enqueue without asking (needed when not on a terminal)"
    )
    add_settings(enqueue, keys_of(ENQUEUE_GROUPS))

    consume = sub.add_parser(
        "consume", help="cancel the orders of the Redis requests stream, as one of a group"
    )
    consume.add_argument(
        "--exit-when-empty",
        action="store_true",
        help="exit once the group has no new or pending entry (a batch Job)",
    )
    add_settings(consume, keys_of(CONSUME_GROUPS))

    redrive = sub.add_parser("redrive", help="move dead letters back to the requests stream")
    add_settings(redrive, keys_of(ENQUEUE_GROUPS))


def _add_plan_commands(sub: argparse._SubParsersAction[Parser]) -> None:
    """plan, apply and control: the guardrails that are commands of their own."""
    plan = sub.add_parser(
        "plan", help="write the orders a run would send to a plan file to review; send nothing"
    )
    _add_input(plan, optional=True)
    plan.add_argument("--select", action="store_true", help="plan the selection's orders")
    plan.add_argument("--output", metavar="PLAN", type=Path, required=True, help="the plan file")
    plan.add_argument("--check", action="store_true", help="add each order's predicted outcome")
    plan.add_argument(
        "--expires-in", metavar="DURATION", default="24h", help="how long it may be applied (24h)"
    )
    add_no_progress(plan)
    add_filter_arguments(plan)
    add_settings(plan, RUN_SETTINGS)

    apply = sub.add_parser("apply", help="send exactly the orders of a reviewed plan file")
    apply.add_argument("plan", metavar="PLAN", help="the plan file (cancel-orders plan)")
    apply.add_argument(
        "--expect-digest",
        metavar="HEX",
        help="refuse the plan unless its digest starts with HEX (at least 12 characters): "
        "the one the reviewer approved",
    )
    _add_run_options(apply)

    control = sub.add_parser(
        "control", help="pause, resume, stop or re-rate a running run or consumer group"
    )
    control.add_argument("action", choices=ACTIONS, help="what to do")
    control.add_argument("value", nargs="?", metavar="R", help="the new rate, for `rate`")
    add_settings(control, CONTROL_KEYS)


def _add_history_commands(sub: argparse._SubParsersAction[Parser]) -> None:
    """runs, history, audit and prune: who ran what and why, every request."""
    runs = sub.add_parser("runs", help="the ledger's runs, newest first: who, why, what, how")
    runs.add_argument("--format", choices=("table", "json", "csv"), default="table")
    _add_output(runs)
    add_settings(runs, REPORT_KEYS)
    history = sub.add_parser("history", help="every request ever sent for one order")
    history.add_argument("order_id", metavar="ORDER_ID", help="the order")
    history.add_argument("--format", choices=("table", "json"), default="table")
    _add_output(history)
    add_settings(history, REPORT_KEYS)
    audit = sub.add_parser("audit", help="export the attempt log (JSON lines or CSV)")
    audit.add_argument(
        "--since", metavar="DATE", help="from this date or time, or this long ago (24h, 7d)"
    )
    audit.add_argument("--run", metavar="ID", help="only this run's requests")
    audit.add_argument("--format", choices=("jsonl", "csv"), default="jsonl")
    _add_output(audit)
    add_settings(audit, REPORT_KEYS)
    prune = sub.add_parser("prune", help="delete old attempt rows (orders and runs are kept)")
    prune.add_argument("--older-than", metavar="DURATION", required=True, help="e.g. 90d, 2160h")
    add_settings(prune, ("ledger", "log_format", "log_level"))


def _add_output(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--output", metavar="FILE", type=Path, help="write there (owner-only) instead of stdout"
    )


def build_parser() -> argparse.ArgumentParser:
    """The whole command line."""
    parser = Parser(
        prog="cancel-orders",
        description="Bulk-cancel SOGET MouvONE customer orders, resumably.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)

    run = sub.add_parser(
        "run",
        help="cancel the orders listed in a CSV file or on stdin, or selected by filters",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_input(run, optional=True)
    run.add_argument(
        "--force", action="store_true", help="send again orders that already have a final outcome"
    )
    run.add_argument(
        "--select",
        action="store_true",
        help="cancel the orders the selection filters find (instead of INPUT)",
    )
    _add_run_options(run)
    add_filter_arguments(run)

    select = sub.add_parser("select", help="write the IDs of the orders matching filters (CSV)")
    select.add_argument(
        "--output", metavar="FILE", default="-", help="where to write the IDs (- for stdout)"
    )
    add_no_progress(select)
    add_filter_arguments(select)
    add_settings(select, RUN_SETTINGS)

    check = sub.add_parser(
        "check", help="predict each order's outcome with GET requests; cancel nothing"
    )
    _add_input(check)
    add_report_format(check)
    add_settings(check, RUN_SETTINGS)

    retry = sub.add_parser("retry", help="send again the retryable_failed and pending orders")
    retry.add_argument(
        "--force",
        action="store_true",
        help="retry even though the last run stopped before reading all of its input",
    )
    _add_run_options(retry)

    _add_plan_commands(sub)

    report = sub.add_parser("report", help="show or export the outcomes recorded in a ledger")
    add_report_format(report, html=True)
    report.add_argument("--run", metavar="ID", help="only the orders this run dealt with")
    add_settings(report, REPORT_KEYS)
    _add_history_commands(sub)

    _add_queue_commands(sub)

    simulate = sub.add_parser("simulate", help="run a local MouvONE look-alike")
    add_simulate_arguments(simulate)

    demo = sub.add_parser("demo", help="the full pipeline against the built-in simulator")
    demo.add_argument(
        "--keep", metavar="DIR", type=Path, help="keep the demo's ledger and input in DIR"
    )
    return parser


EXAMPLES = """examples:
  cancel-orders demo                                   the whole pipeline against the simulator
  cancel-orders run orders.csv --dry-run               what would be sent, nothing sent
  cancel-orders run orders.csv --target prod --config prod.toml
                                                       asks before it sends; --yes in a script
  head -100 orders.csv | cancel-orders run - --yes     a small first batch
  cancel-orders report --outcome rejected              the orders that need a person
  cancel-orders run orders.csv --yes                   after a stop: the same command resumes

The target (--base-url and --token-url, or --target NAME) has no default; the ledger is
./cancellations.sqlite unless --ledger says otherwise, and belongs to one target."""


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``cancel-orders``; returns the exit status."""
    harden()
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    raise_on_stopping_signals()
    try:
        module, name = COMMANDS[args.command].split(":")
        command: Callable[[argparse.Namespace], int] = getattr(
            importlib.import_module(f"worker.cli.{module}"), name
        )
        return command(args)
    except WorkerError as exc:
        flush_logs()  # the gathered log lines first: the error is the last line
        say(sys.stderr, f"cancel-orders: error: {printable(redact.text(str(exc)))}\n")
        return exc.exit_code
    except Stopped as stop:  # SIGTERM or SIGHUP between event loops (runtime.signals)
        say(sys.stderr, f"cancel-orders: stopped by {stop.signal.name}: nothing more was sent\n")
        return stop.exit_code
    except KeyboardInterrupt:
        print("cancel-orders: interrupted: nothing more was sent", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `cancel-orders report --format csv | head`
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except Exception:  # noqa: BLE001 - a bug: say so, exit as aborted rather than as exit 1
        traceback.print_exc()
        print(
            "cancel-orders: internal error (above); what was recorded stays in the ledger: "
            "resume with the same command",
            file=sys.stderr,
        )
        return 3
