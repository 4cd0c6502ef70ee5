"""`run` and `retry`: check the target and the credentials, count and confirm the plan, run the
pool over the input and the ledger, then the summary, the metrics and the exit status."""

from __future__ import annotations

import argparse
import sys
from contextlib import ExitStack

import structlog

from worker.cli.common import masked_command_line, say, settings_from, terminal
from worker.cli.flags import RUN_GROUPS, keys_of
from worker.cli.inputs import last_run, source_from
from worker.cli.who import who_from
from worker.domain.errors import ConfigError, WorkerError
from worker.domain.models import Result, RunOptions, RunReport
from worker.ledger import check_target, ledger_exists, open_ledger
from worker.pipeline.control import with_signals
from worker.reports.report import render_run
from worker.runs.lifecycle import (
    Counts,
    announce_end,
    cap,
    count_to_send,
    export_metrics,
    job_name,
    refused,
)
from worker.runs.runner import RECORDED_LIMITS, Runner
from worker.runtime import loop as event_loop
from worker.runtime.redaction import printable, redact
from worker.settings import Settings, given_elsewhere, revalidated
from worker.sources import OrderInput
from worker.sources import plan as plans

log = structlog.get_logger(__name__)


def cmd_run(args: argparse.Namespace) -> int:
    """`run` and `retry`; a run refused before it starts still writes its metrics (exit 2),
    so that a scheduled job that never ran alerts as one that failed."""
    settings = settings_from(args, keys_of(RUN_GROUPS))
    if settings.job is None:  # the same name whether the run is refused or ends
        given = "select" if getattr(args, "select", False) else getattr(args, "input", None)
        given = getattr(args, "plan", None) or given
        settings = settings.model_copy(update={"job": job_name(args.command, given)})
    try:
        return _run(args, settings)
    except WorkerError as exc:
        if not args.dry_run:
            event_loop.run(refused(settings, args.command, exc, None))
        raise


def _run(args: argparse.Namespace, settings: Settings) -> int:
    if args.command == "retry":
        settings = _with_recorded_limits(settings, args)
    if not args.dry_run:
        settings.require_target()
        settings.require_credentials()
        check_target(settings.ledger, settings.api_url)
    with ExitStack() as stack:
        source = source_from(args, settings, stack)
        total = source.scan()
        if total == 0:
            log.warning("empty_input", input=source.name, detail="no order ID to send")
        ledger = open_ledger(
            settings.ledger, dry=args.dry_run, stack=stack, claim_idle=settings.claim_idle
        )
        approved = None
        force = getattr(args, "force", False)
        if not args.dry_run and (not args.yes or settings.max_orders is not None):
            plan = count_to_send(source, settings.ledger, force=force)
            cap(plan.to_send, settings)
            if not args.yes:
                _confirm(source, settings, plan, total)
            approved = plan.to_send
        elif args.dry_run and args.command == "apply":  # what its prompt would show
            plan = count_to_send(source, settings.ledger, force=force)
            shown = confirmation(source, settings, plan, total)
            say(sys.stderr, f"{shown}\n(--dry-run: nothing is asked, nothing is sent)\n")
        options = RunOptions(
            command=args.command,
            force=getattr(args, "force", False),
            dry_run=args.dry_run,
            progress_bar=sys.stderr.isatty() and not args.no_progress,
            total=total,
            resume=(resume := masked_command_line(getattr(args, "argv", []))),
            plan=getattr(source, "digest", ""),
            plan_expires_at=getattr(source, "expires_at", ""),
            who=None if args.dry_run else who_from(args, settings, source, resume),
            approved=approved,
        )
        ask = None if args.yes else _ask_after_canary
        runner = Runner(settings, source, ledger, options, ask=ask)
        report = event_loop.run(_execute(runner))
        export_metrics(runner.metrics, settings, args.command, report.exit_code)
        # The run's exit status is its own: a closed stdout or stderr (`| head`) loses only text.
        say(sys.stdout, render_run(report.as_dict()))
        if not args.dry_run:  # after the summary: a slow webhook never delays what people read
            event_loop.run(announce_end(settings, args.command, report.as_dict(), options.who))
        say(sys.stderr, f"cancel-orders: {ending(report)}\n")  # the last line, whatever the end
        return report.exit_code


def ending(report: RunReport) -> str:
    """How the run ended, in the one line that ends its standard error (what a job's alert
    quotes), as the JSON summary and the run record hold it, made safe for a terminal."""
    return printable(redact.text(report.ending))


def _with_recorded_limits(settings: Settings, args: argparse.Namespace) -> Settings:
    """`retry` keeps the limits its ledger's last run was given (--rate, --concurrency, ...)
    unless this command gives them itself (a flag, the environment, .env, --config)."""
    if not ledger_exists(settings.ledger):
        return settings
    last, summary = last_run(settings.ledger)
    limits = summary.get("limits")
    if last is None or not isinstance(limits, dict):
        return settings
    given = given_elsewhere(args.config) | {k for k in limits if getattr(args, k, None) is not None}
    reuse = {k: v for k, v in limits.items() if k in RECORDED_LIMITS and k not in given}
    if reuse:
        log.info("retry_reuses_limits", run_id=last["run_id"], **reuse)
        where = f"the limits recorded by run {last['run_id']} (give them as flags to override)"
        settings = revalidated(settings, reuse, where)
    return settings


def confirmation(source: OrderInput, settings: Settings, plan: Counts, total: int) -> str:
    """The plan as a person needs it before sending: target, input, what will be sent and what
    not, how long it takes at --rate; for a plan file, its reason and its predictions."""
    per_order = 2 if settings.required_statuses else 1  # --require-status: a GET before each
    seconds = plan.to_send * per_order / settings.rate
    took = f"{seconds / 60:.0f} min" if seconds >= 60 else f"{seconds:.0f} s"
    how = " (a look-up and a DELETE per order)" if per_order == 2 else ""
    lines = [
        f"About to cancel {plan.to_send} orders at {settings.target_label} "
        f"(tokens from {settings.token_host})",
        f"Input:   {source.name}, {total} IDs",
        f"Ledger:  {settings.ledger}",
        f"Plan:    cancel {plan.to_send} orders; not sent: {plan.final} already final, "
        f"{plan.invalid} invalid, {plan.duplicates} duplicates",
        f"Time:    about {took} at --rate {settings.rate:g}{how}",
    ]
    reviewed = getattr(source, "plan", None)
    if isinstance(reviewed, plans.Plan):
        lines += plans.review_lines(reviewed)
    return "\n".join(lines)


def _confirm(source: OrderInput, settings: Settings, plan: Counts, total: int) -> None:
    """Show the confirmation and ask for "yes", on the terminal even when the orders come on
    standard input; nothing to send: nothing to ask. Refuse when nobody can be asked."""
    if plan.to_send == 0:
        return  # nothing will be sent: the run only records what is invalid
    answer_from = terminal()
    if answer_from is None:
        raise ConfigError("not on a terminal, so nobody can confirm: pass --yes to send")
    shown = confirmation(source, settings, plan, total)
    say(sys.stderr, f"{shown}\nA cancellation cannot be undone. Type 'yes' to go on: ")
    with answer_from:
        if answer_from.readline().strip().lower() != "yes":
            raise ConfigError("not confirmed: nothing was sent")


def _ask_after_canary(results: list[Result]) -> bool:
    """--canary without --yes: show the canary's outcomes and ask whether to send the rest."""
    answer_from = terminal()
    if answer_from is None:
        return False
    shown = "\n".join(
        f"  {r.order_id}  {r.outcome.value}  {r.error_code or ''}".rstrip() for r in results
    )
    say(
        sys.stderr,
        f"\nCanary: the first {len(results)} orders ended so:\n{shown}\n"
        "Not every one ended cancelled or already_cancelled. Type 'yes' to send the rest: ",
    )
    with answer_from:
        return answer_from.readline().strip().lower() == "yes"


async def _execute(runner: Runner) -> RunReport:
    """Run with SIGINT and SIGTERM turned into a graceful stop."""
    return await with_signals(runner.control, runner.execute())
