"""The command line: parse, load settings, configure logs, run, map the result to an exit status."""

from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import sys
import tempfile
import traceback
from collections.abc import Callable, Sequence
from contextlib import ExitStack, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn, TextIO

import structlog

from worker import __version__
from worker.cli.flags import (
    CONSUME_GROUPS,
    ENQUEUE_GROUPS,
    REPORT_KEYS,
    RUN_GROUPS,
    add_settings,
    keys_of,
)
from worker.domain.errors import ConfigError, WorkerError
from worker.domain.models import Outcome, RunOptions, RunReport, new_run_id
from worker.ledger import Ledger, check_target, open_ledger
from worker.pipeline.control import with_signals
from worker.pipeline.runner import RECORDED_LIMITS, Runner
from worker.reports.report import open_output, render_run, write_report
from worker.runtime import loop as event_loop
from worker.runtime.logs import configure, flush_logs, redact, silence
from worker.runtime.metrics import Metrics
from worker.settings import FILES_READ, Settings, given_elsewhere, load_settings
from worker.sources import IdValidator, OrderSource
from worker.sources.csv_file import CsvSource, needs_spooling, spool_stdin
from worker.sources.ledger_source import LedgerSource

log = structlog.get_logger(__name__)

FILTER_DESTS = (
    "status",
    "created_after",
    "created_before",
    "older_than",
    "processing_indicator",
    "carrier_code",
    "transport_order_number",
    "container_number",
)
RUN_SETTINGS = keys_of(RUN_GROUPS)


class _Parser(argparse.ArgumentParser):
    """argparse, with usage errors on one line and exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _add_run_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="validate and report what would be sent; send nothing",
    )
    parser.add_argument(
        "--yes", action="store_true", help="send without asking (needed when not on a terminal)"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_settings(parser, RUN_SETTINGS)


def _add_report_format(parser: argparse.ArgumentParser, *, html: bool = False) -> None:
    formats = ("table", "json", "csv", "html") if html else ("table", "json", "csv")
    parser.add_argument("--format", choices=formats, default="table")
    parser.add_argument(
        "--output", metavar="FILE", type=Path, help="write there (owner-only) instead of stdout"
    )
    parser.add_argument(
        "--outcome",
        choices=[o.value for o in Outcome],
        metavar="NAME",
        help="only orders with this outcome",
    )


def _add_queue_commands(sub: argparse._SubParsersAction[_Parser]) -> None:
    enqueue = sub.add_parser("enqueue", help="append order IDs to the Redis requests stream")
    enqueue.add_argument("input", metavar="INPUT", help="CSV or text file, or - for standard input")
    enqueue.add_argument("--column", metavar="NAME", help="the column holding the order IDs")
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


def build_parser() -> argparse.ArgumentParser:
    """The whole command line."""
    parser = _Parser(
        prog="cancel-orders",
        description="Bulk-cancel SOGET MouvONE customer orders, resumably.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    from worker.cli.selecting import add_filter_arguments  # noqa: PLC0415 - keeps imports one-way

    run = sub.add_parser(
        "run",
        help="cancel the orders listed in a CSV file or on stdin, or selected by filters",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run.add_argument(
        "input", metavar="INPUT", nargs="?", help="CSV or text file, or - for standard input"
    )
    run.add_argument("--column", metavar="NAME", help="the column holding the order IDs")
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
    select.add_argument("--no-progress", action="store_true", help="no progress display")
    add_filter_arguments(select)
    add_settings(select, RUN_SETTINGS)

    check = sub.add_parser(
        "check", help="predict each order's outcome with GET requests; cancel nothing"
    )
    check.add_argument("input", metavar="INPUT", help="CSV or text file, or - for standard input")
    check.add_argument("--column", metavar="NAME", help="the column holding the order IDs")
    _add_report_format(check)
    add_settings(check, RUN_SETTINGS)

    retry = sub.add_parser("retry", help="send again the retryable_failed and pending orders")
    retry.add_argument(
        "--force",
        action="store_true",
        help="retry even though the last run stopped before reading all of its input",
    )
    _add_run_options(retry)

    report = sub.add_parser("report", help="show or export the outcomes recorded in a ledger")
    _add_report_format(report, html=True)
    add_settings(report, REPORT_KEYS)

    _add_queue_commands(sub)

    from worker.simulator.config import add_simulate_arguments  # noqa: PLC0415 - keeps imports one-way

    simulate = sub.add_parser("simulate", help="run a local MouvONE look-alike")
    add_simulate_arguments(simulate)

    demo = sub.add_parser("demo", help="the full pipeline against the built-in simulator")
    demo.add_argument(
        "--keep", metavar="DIR", type=Path, help="keep the demo's ledger and input in DIR"
    )
    return parser


SECRET_FLAGS = ("--client-secret", "--api-key", "--access-token")
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


_CORE_LIMIT: tuple[int, int] | None = None  # as the process started


def _harden() -> None:
    """Files owner-only; no core dump (it would hold the secret, the key and the token) unless
    the settings allow them (core_dumps: the limit is restored then)."""
    global _CORE_LIMIT  # noqa: PLW0603 - the process's own limit, read once
    os.umask(0o077)  # the ledger, its WAL and every report file: readable by their owner only
    with suppress(ValueError, OSError):
        _CORE_LIMIT = resource.getrlimit(resource.RLIMIT_CORE)
        resource.setrlimit(resource.RLIMIT_CORE, (0, _CORE_LIMIT[1]))


def _allow_core_dumps() -> None:
    if _CORE_LIMIT is not None:
        with suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_CORE, _CORE_LIMIT)


def _warn_secret_flags(argv: Sequence[str]) -> None:
    """A secret given as a flag stays visible in `ps` for the whole run: say so, and how else."""
    given = sorted({a.split("=", 1)[0] for a in argv if a.split("=", 1)[0] in SECRET_FLAGS})
    if given:
        log.warning(
            "secret_on_command_line",
            flags=given,
            detail="visible to every user of this host in `ps` while the run lasts; pass it in "
            "the environment (MOUVONE_CLIENT_SECRET, MOUVONE_API_KEY, MOUVONE_ACCESS_TOKEN) or "
            "a file only you can read (--client-secret-file, --api-key-file)",
        )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``cancel-orders``; returns the exit status."""
    _harden()
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    commands: dict[str, Callable[[argparse.Namespace], int]] = {
        "run": cmd_run,
        "retry": cmd_run,
        "report": cmd_report,
        "select": _select,
        "check": _check,
        "enqueue": _enqueue,
        "consume": _consume,
        "redrive": _redrive,
        "simulate": _simulate,
        "demo": _demo,
    }
    try:
        command: Callable[[argparse.Namespace], int] = commands[args.command]
        return command(args)
    except WorkerError as exc:
        flush_logs()  # the gathered log lines first: the error is the last line
        _say(sys.stderr, f"cancel-orders: error: {redact.clean(str(exc))}\n")
        return exc.exit_code
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


def _settings(args: argparse.Namespace, keys: Sequence[str]) -> Settings:
    flags = {key: getattr(args, key, None) for key in keys}
    settings = load_settings(flags, args.config)
    configure(settings.log_format, settings.log_level, settings.secrets())
    if FILES_READ:
        log.info("settings_files", files=list(FILES_READ))
    if settings.core_dumps:
        _allow_core_dumps()
    _warn_secret_flags(getattr(args, "argv", []))
    return settings


def cmd_run(args: argparse.Namespace) -> int:
    """`run` and `retry`; a run refused before it starts still writes its metrics (exit 2),
    so that a scheduled job that never ran alerts as one that failed."""
    settings = _settings(args, RUN_SETTINGS)
    try:
        return _run(args, settings)
    except WorkerError as exc:
        if not args.dry_run:
            refused = Metrics()
            refused.ended(exc.exit_code)
            _write_metrics(refused, settings, args.command)
        raise


def _run(args: argparse.Namespace, settings: Settings) -> int:
    if args.command == "retry":
        settings = _with_recorded_limits(settings, args)
    if not args.dry_run:
        settings.require_target()
        settings.require_credentials()
        check_target(settings.ledger, settings.api_url)
    with ExitStack() as stack:
        source = _source(args, settings, stack)
        total = source.scan()
        if total == 0:
            log.warning("empty_input", input=source.name, detail="no order ID to send")
        ledger = open_ledger(settings.ledger, dry=args.dry_run, stack=stack)
        if not args.dry_run and (not args.yes or settings.max_orders is not None):
            plan = _plan(source, settings.ledger, force=getattr(args, "force", False))
            _cap(plan.to_send, settings)
            if not args.yes:
                _confirm(source, settings, plan, total)
        options = RunOptions(
            command=args.command,
            force=getattr(args, "force", False),
            dry_run=args.dry_run,
            progress_bar=sys.stderr.isatty() and not args.no_progress,
            total=total,
            resume=_resume_command(args),
        )
        runner = Runner(settings, source, ledger, options)
        report = event_loop.run(_execute(runner))
        _export_metrics(runner, settings, report.exit_code)
        # The run's exit status is its own: a closed stdout or stderr (`| head`) loses only text.
        _say(sys.stdout, render_run(report.as_dict()))
        if report.exit_code in (3, 130, 143) and report.reason:
            _say(
                sys.stderr,
                f"cancel-orders: {redact.clean(report.reason)}; unanswered orders stay pending: "
                "resume with the same command\n",
            )
        return report.exit_code


def _say(stream: TextIO, text: str) -> None:
    """Write and flush; a stream that cannot be written is pointed at /dev/null instead."""
    try:
        stream.write(text)
        stream.flush()
    except (OSError, ValueError):
        silence(stream)


def _with_recorded_limits(settings: Settings, args: argparse.Namespace) -> Settings:
    """`retry` keeps the limits its ledger's last run was given (--rate, --concurrency, ...)
    unless this command gives them itself (a flag, the environment, .env, --config)."""
    if not settings.ledger.is_file():
        return settings
    last, summary = _last_run(settings.ledger)
    limits = summary.get("limits")
    if last is None or not isinstance(limits, dict):
        return settings
    given = given_elsewhere(args.config) | {k for k in limits if getattr(args, k, None) is not None}
    reuse = {k: v for k, v in limits.items() if k in RECORDED_LIMITS and k not in given}
    if reuse:
        log.info("retry_reuses_limits", run_id=last["run_id"], **reuse)
        settings = settings.model_copy(update=reuse)
    return settings


def _resume_command(args: argparse.Namespace) -> str:
    """The command line as given, a secret flag's value masked: what resumes a stopped run
    (with `-`, the same orders on standard input again)."""
    words: list[str] = []
    masked = False
    for word in getattr(args, "argv", []):
        words.append("***" if masked else word)
        masked = word in SECRET_FLAGS
        if "=" in word and word.split("=", 1)[0] in SECRET_FLAGS:
            words[-1] = word.split("=", 1)[0] + "=***"
    return "cancel-orders " + shlex.join(words)


def _export_metrics(runner: Runner, settings: Settings, exit_code: int) -> None:
    """Write or push the run's metrics, as the settings ask, with how it ended."""
    runner.metrics.ended(exit_code)
    _write_metrics(runner.metrics, settings, runner.options.command)


def _write_metrics(metrics: Metrics, settings: Settings, command: str) -> None:
    if settings.metrics_textfile is not None:
        try:
            metrics.write_textfile(settings.metrics_textfile)
        except (OSError, ConfigError) as exc:
            _say(sys.stderr, f"cancel-orders: warning: metrics not written: {exc}\n")
    if settings.pushgateway:
        metrics.push(settings.pushgateway, "cancel-orders", command)


def _source(args: argparse.Namespace, settings: Settings, stack: ExitStack) -> OrderSource:
    if args.command == "retry":
        if not settings.ledger.is_file():
            raise ConfigError(f"{settings.ledger}: no ledger at this path")
        if not args.force:
            _refuse_retry_of_unfinished_input(settings.ledger)
        return LedgerSource(settings.ledger)
    validator = IdValidator(settings.id_pattern)
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


def _last_run(path: Path) -> tuple[dict[str, object] | None, dict[str, object]]:
    """The ledger's last run, and its summary as recorded ({} when none)."""
    ledger = Ledger(path, readonly=True)
    try:
        last = ledger.last_run()
    finally:
        ledger.close()
    summary = json.loads(str(last["summary"])) if last and last.get("summary") else {}
    return last, summary if isinstance(summary, dict) else {}


def _refuse_retry_of_unfinished_input(path: Path) -> None:
    """`retry` sends only what the ledger holds: after a run that stopped before reading all of
    its input, it would leave the rest unsent while the report showed nothing pending."""
    last, summary = _last_run(path)
    if last is None or last.get("command") == "retry":
        return
    not_read = summary.get("not_read", 0)
    if last.get("finished_at") is not None and not not_read:
        return
    what = f"{not_read} IDs of its input not read" if not_read else "it never ended (a crash)"
    resume = summary.get("resume")
    raise ConfigError(
        f"the last run {last['run_id']} stopped before reading all of its input ({what}): "
        f"resume it with the same command{f' ({resume})' if resume else ''}; retry would leave "
        "the rest unsent (--force to retry anyway)"
    )


def _cap(to_send: int, settings: Settings) -> None:
    """--max-orders: more orders to send than the cap is refused before anything is sent."""
    cap = settings.max_orders
    if cap is not None and to_send > cap:
        raise ConfigError(
            f"{to_send} orders would be sent, more than --max-orders {cap} (MOUVONE_MAX_ORDERS): "
            "nothing was sent; check the input or the selection, or raise the cap"
        )


def _confirm(source: OrderSource, settings: Settings, plan: _Counts, total: int) -> None:
    """Show the plan as a person needs it (target, input, what will be sent and what not, how
    long it takes at --rate) and ask for "yes", on the terminal even when the orders come on
    standard input; nothing to send: nothing to ask. Refuse when nobody can be asked."""
    if plan.to_send == 0:
        return  # nothing will be sent: the run only records what is invalid
    answer_from = _terminal()
    if answer_from is None:
        raise ConfigError("not on a terminal, so nobody can confirm: pass --yes to send")
    minutes = plan.to_send / settings.rate / 60
    took = f"{minutes:.0f} min" if minutes >= 1 else f"{plan.to_send / settings.rate:.0f} s"
    _say(
        sys.stderr,
        f"About to cancel {plan.to_send} orders at {settings.target_label} "
        f"(tokens from {settings.token_host})\n"
        f"Input:   {source.name}, {total} IDs\n"
        f"Ledger:  {settings.ledger}\n"
        f"Plan:    cancel {plan.to_send} orders; not sent: {plan.final} already final, "
        f"{plan.invalid} invalid, {plan.duplicates} duplicates\n"
        f"Time:    about {took} at --rate {settings.rate:g}\n"
        "A cancellation cannot be undone. Type 'yes' to go on: ",
    )
    with answer_from:
        if answer_from.readline().strip().lower() != "yes":
            raise ConfigError("not confirmed: nothing was sent")


def _terminal() -> TextIO | None:
    """Where a person can answer: standard input when it is the terminal, else the terminal
    itself (the orders may come on standard input); None without one."""
    if sys.stdin.isatty():
        return open(os.dup(sys.stdin.fileno()), encoding="utf-8")  # noqa: PTH123
    try:
        return open("/dev/tty", encoding="utf-8")  # noqa: PTH123 - closed by the caller
    except OSError:
        return None


@dataclass
class _Counts:
    to_send: int = 0
    final: int = 0
    invalid: int = 0
    duplicates: int = 0


def _plan(source: OrderSource, ledger_path: Path, *, force: bool) -> _Counts:
    counts = _Counts()
    with ExitStack() as stack:
        ledger = open_ledger(ledger_path, dry=True, stack=stack)
        run_id = new_run_id()
        for batch in source.batches(500):
            plan = ledger.claim(batch, run_id, force=force, dry=True)
            counts.to_send += len(plan.to_send)
            counts.final += len(plan.skipped)
            counts.invalid += len(plan.invalid)
            counts.duplicates += plan.duplicates
    return counts


def _selected(
    args: argparse.Namespace, settings: Settings, stack: ExitStack, validator: IdValidator
) -> OrderSource:
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


async def _execute(runner: Runner) -> RunReport:
    """Run with SIGINT and SIGTERM turned into a graceful stop."""
    return await with_signals(runner.control, runner.execute())


def cmd_report(args: argparse.Namespace) -> int:
    """`report`: table, json, csv or html, from the ledger (or the results stream)."""
    settings = _settings(args, REPORT_KEYS)
    with ExitStack() as stack:
        out = open_output(args.output, stack)
        if args.redis_url or args.results_stream:
            from worker.cli.queue import cmd_report_stream  # noqa: PLC0415

            return cmd_report_stream(settings, args.format, args.outcome, out)
        ledger = Ledger(settings.ledger, readonly=True)
        stack.callback(ledger.close)
        write_report(ledger, out, args.format, args.outcome)
    if args.output is not None:
        print(f"Report written to {args.output}", file=sys.stderr)
    return 0


def _enqueue(args: argparse.Namespace) -> int:
    from worker.cli.queue import cmd_enqueue  # noqa: PLC0415 - redis only when needed

    settings = _settings(args, keys_of(ENQUEUE_GROUPS))
    with ExitStack() as stack:
        source = _source(args, settings, stack)
        source.scan()
        if settings.max_orders is not None:
            valid: set[str] = set()
            for batch in source.batches(1000):
                valid.update(order_id for order_id, bad in batch if bad is None)
            _cap(len(valid), settings)
        return cmd_enqueue(settings, source)


def _consume(args: argparse.Namespace) -> int:
    from worker.cli.queue import cmd_consume  # noqa: PLC0415

    return cmd_consume(_settings(args, keys_of(CONSUME_GROUPS)), args)


def _redrive(args: argparse.Namespace) -> int:
    from worker.cli.queue import cmd_redrive  # noqa: PLC0415

    return cmd_redrive(_settings(args, keys_of(ENQUEUE_GROUPS)))


def _select(args: argparse.Namespace) -> int:
    from worker.cli.selecting import cmd_select  # noqa: PLC0415

    return cmd_select(args, _settings(args, RUN_SETTINGS))


def _check(args: argparse.Namespace) -> int:
    from worker.pipeline.check import run_check  # noqa: PLC0415

    settings = _settings(args, RUN_SETTINGS)
    settings.require_credentials()
    with ExitStack() as stack:
        source = _source(args, settings, stack)
        source.scan()
        out = open_output(args.output, stack)
        return run_check(settings, source, out, args.format, args.outcome)


def _simulate(args: argparse.Namespace) -> int:
    from worker.cli.demo import simulate  # noqa: PLC0415

    return simulate(args)


def _demo(args: argparse.Namespace) -> int:
    from worker.cli.demo import demo  # noqa: PLC0415

    return demo(args)
