"""The life of a sending run around the pool, shared by the command line and the Python API:
the target bound to the ledger, the cap counted before anything is sent, the run's record,
then after the run its metrics and its notification.

``cancel_orders`` is the Python API: the same run as `cancel-orders run IDS --yes`, with the
same ledger, guardrails and audit, for runbooks and notebooks (docs/python-api.md).
"""

from __future__ import annotations

import asyncio
import re
import socket
import sys
from collections.abc import Iterable, Iterator, Mapping
from contextlib import ExitStack, suppress
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from worker import __version__
from worker.domain.errors import ConfigError, WorkerError
from worker.domain.location import Location
from worker.domain.models import RunOptions, RunRecord, RunReport, new_run_id
from worker.ledger import check_target, ledger_at, open_ledger
from worker.ledger.plan import Plan
from worker.ledger.schema import CSV_COLUMNS
from worker.pipeline.control import RunControl
from worker.runs.runner import Runner
from worker.runtime.metrics import Metrics
from worker.runtime.redaction import redact
from worker.settings import Settings
from worker.sources import IdValidator, OrderInput
from worker.sources.plan import PlanSource, os_user

log = structlog.get_logger(__name__)

LIMITS = ("rate", "concurrency", "max_attempts", "max_orders", "canary", "require_status")
API_COMMAND = "api"  # the command a run started from Python is recorded as
DRY_BATCH = 1000  # IDs a dry claim decides at once


@dataclass
class Counts:
    """What a run would do with its input, counted before anything is sent."""

    to_send: int = 0
    final: int = 0
    invalid: int = 0
    duplicates: int = 0


def dry_claims(source: OrderInput, ledger_path: Location, *, force: bool) -> Iterator[Plan]:
    """The input's orders batch by batch as a run would claim them, without writing anything
    (a dry claim: duplicates across batches are told apart)."""
    with ExitStack() as stack:
        ledger = open_ledger(ledger_path, dry=True, stack=stack)
        run_id = new_run_id()
        for batch in source.batches(DRY_BATCH):
            yield ledger.claim(batch, run_id, force=force, dry=True)


def count_to_send(source: OrderInput, ledger_path: Location, *, force: bool) -> Counts:
    """What a run would do with its input, counted before anything is sent."""
    counts = Counts()
    for plan in dry_claims(source, ledger_path, force=force):
        counts.to_send += len(plan.to_send)
        counts.final += len(plan.skipped)
        counts.invalid += len(plan.invalid)
        counts.duplicates += plan.duplicates
    return counts


def cap(to_send: int, settings: Settings) -> None:
    """--max-orders: more orders to send than the cap is refused before anything is sent."""
    most = settings.max_orders
    if most is not None and to_send > most:
        raise ConfigError(
            f"{to_send} orders would be sent, more than --max-orders {most} (MOUVONE_MAX_ORDERS): "
            "nothing was sent; check the input or the selection, or raise the cap"
        )


def run_record(
    settings: Settings,
    command_line: str,
    facts: Mapping[str, object],
    people: Mapping[str, str | None] | None = None,
) -> RunRecord:
    """Who runs this and why (``people``, else the settings, else the OS user), from what input
    (``facts``), against which target, with which limits: recorded with the run."""
    given = people or {}
    details: dict[str, object] = {
        "command_line": command_line,
        "version": __version__,
        "input": dict(facts),
        "target": settings.target_label if settings.base_url else None,
        "token_host": settings.token_host if settings.base_url else None,
        "limits": {key: getattr(settings, key) for key in LIMITS},
    }
    return RunRecord(
        operator=settings.operator or given.get("operator") or os_user(),
        host=socket.gethostname(),
        reason=settings.reason or given.get("reason"),
        ticket=settings.ticket or given.get("ticket"),
        details=details,
    )


async def refused(
    settings: Settings, command: str, exc: WorkerError, who: RunRecord | None
) -> None:
    """A run refused before it started still writes its metrics and notifies: a scheduled job
    that never ran alerts as one that failed."""
    export_metrics(Metrics(), settings, command, exc.exit_code)
    ended_as = {"exit_code": exc.exit_code, "reason": redact.text(str(exc))}
    await announce_end(settings, command, ended_as, who)


def job_name(command: str, given: str | None) -> str:
    """The default job name: the command and its input's name (``run-orders`` for
    ``run orders.csv``, ``run-stdin``, ``run-select``, ``apply-plan``), or the command alone."""
    if given == "-":
        stem = "stdin"
    else:
        stem = re.sub(r"[^A-Za-z0-9_.:-]", "_", Path(given).stem)[:60] if given else ""
    return f"{command}-{stem}" if stem else command


def export_metrics(metrics: Metrics, settings: Settings, command: str, exit_code: int) -> None:
    """The run's metrics, with how it ended, to the textfile and the Pushgateway, as the
    settings ask (labelled with the settings' job, else the command); a failure is a warning,
    never the run's exit status."""
    metrics.job = settings.job or command
    metrics.ended(exit_code)
    if settings.metrics_textfile is not None:
        try:
            metrics.write_textfile(settings.metrics_textfile)
        except (OSError, ConfigError) as exc:
            with suppress(OSError, ValueError):  # a closed stderr loses only the warning
                sys.stderr.write(f"cancel-orders: warning: metrics not written: {exc}\n")
    if settings.pushgateway:
        metrics.push(settings.pushgateway, command)


async def announce_end(
    settings: Settings, command: str, ended: dict[str, object], who: RunRecord | None
) -> None:
    """--notify-url and --on-finish, when the run ends (a refusal too)."""
    if not (settings.notify_urls or settings.on_finish):
        return
    from worker.reports.notify import announce, payload  # noqa: PLC0415 - only when asked

    if "target" not in ended and settings.base_url:
        ended["target"] = settings.target_label
    people = {
        "operator": who.operator if who else settings.operator or os_user(),
        "reason": who.reason if who else settings.reason,
        "ticket": who.ticket if who else settings.ticket,
    }
    data = await asyncio.to_thread(payload, ended, command, people, settings.ledger)
    await announce(data, settings)


@dataclass
class Cancellation:
    """What ``cancel_orders`` returns: how the run ended, and each order it dealt with."""

    report: RunReport
    results: list[dict[str, object]] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        """The exit status `cancel-orders run` would have ended with (docs: exit statuses)."""
        return self.report.exit_code


async def cancel_orders(
    order_ids: Iterable[str],
    settings: Settings,
    *,
    force: bool = False,
    control: RunControl | None = None,
) -> Cancellation:
    """Cancel these orders as `cancel-orders run --yes` would: every ID checked against the ID
    pattern, duplicates sent once, orders final in the ledger skipped (``force``: sent again),
    the ledger bound to its target, --max-orders counted before anything is sent, the canary,
    deadlines, stop file, `control` and --max-failure-rate in force, every request in the
    attempt log, the run recorded (command ``api``), then its metrics and its notification.

    Raises ConfigError (nothing sent) for a missing target or credential, a ledger of another
    target, or more orders than --max-orders. ``control`` lets the caller stop the run (its
    ``interrupt`` or ``abort``); no signal handler is installed. The results are the ledger's
    rows for the orders this run dealt with (CSV columns of `report`, messages redacted)."""
    for secret, shown in settings.secrets().items():
        redact.add(secret, shown)
    ids = list(order_ids)
    source = PlanSource(
        ids, f"{len(ids)} order IDs given in Python", IdValidator(settings.id_pattern)
    )
    who = run_record(
        settings, "python: cancel_orders(...)", {"name": source.name, "count": len(ids)}
    )
    try:
        settings.require_target()
        settings.require_credentials()
        check_target(settings.ledger, settings.api_url)
        report = await _run(settings, source, who, force=force, control=control)
    except WorkerError as exc:
        await refused(settings, API_COMMAND, exc, who)
        raise
    await announce_end(settings, API_COMMAND, report.as_dict(), who)
    results = await asyncio.to_thread(_results_of, settings.ledger, report.run_id)
    return Cancellation(report, results)


async def _run(
    settings: Settings,
    source: OrderInput,
    who: RunRecord,
    *,
    force: bool,
    control: RunControl | None,
) -> RunReport:
    with ExitStack() as stack:
        ledger = open_ledger(
            settings.ledger, dry=False, stack=stack, claim_idle=settings.claim_idle
        )
        approved = None
        if settings.max_orders is not None:
            counts = await asyncio.to_thread(count_to_send, source, settings.ledger, force=force)
            cap(counts.to_send, settings)
            approved = counts.to_send
        options = RunOptions(
            command=API_COMMAND, force=force, total=source.scan(), who=who, approved=approved
        )
        runner = Runner(settings, source, ledger, options, control=control)
        report = await runner.execute()
    export_metrics(runner.metrics, settings, API_COMMAND, report.exit_code)
    return report


def _results_of(location: Location, run_id: str) -> list[dict[str, object]]:
    ledger = ledger_at(location, readonly=True)
    try:
        return [
            dict(zip(CSV_COLUMNS, row, strict=True)) for row in ledger.audit().run_orders(run_id)
        ]
    finally:
        ledger.close()
