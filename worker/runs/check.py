"""`cancel-orders check INPUT`: predict each order's outcome with ``GET /customer-orders/{id}``,
at the rate limit, without cancelling anything; reported in the ledger report's formats.

A check is a run like any other (the same pool, limiter, breaker, progress, stop file and
signals) whose dispatcher predicts instead of sending, into a scratch ledger of its own: the
run's ledger is never read or written, and no canary or failure rate stops it (a prediction
that an order would fail is what a check is for)."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TextIO

from worker.domain.errors import FatalApiError, WorkerError
from worker.domain.models import SUCCESS, Outcome, RunOptions
from worker.ledger import SqliteLedger
from worker.pipeline.control import with_signals
from worker.reports.report import write_report
from worker.runs.runner import Runner
from worker.runtime import loop as event_loop
from worker.settings import Settings
from worker.sources import OrderInput


async def _predict_into(
    settings: Settings, source: OrderInput, ledger: SqliteLedger, progress_bar: bool
) -> None:
    """Predict every order of the input into ``ledger`` (a scratch ledger); FatalApiError
    (or the stop's own exit status) when the check stopped before the end."""
    options = RunOptions(
        command="check", force=True, predict=True, progress_bar=progress_bar, total=source.scan()
    )
    predicting = settings.model_copy(update={"canary": 0, "max_failure_rate": None})
    runner = Runner(predicting, source, ledger, options)
    report = await with_signals(runner.control, runner.execute())
    if report.reason is not None:
        error = FatalApiError if report.exit_code == 3 else WorkerError
        stopped = error(report.reason)
        stopped.exit_code = report.exit_code
        raise stopped


def _predicted(
    settings: Settings, source: OrderInput, folder: str, progress_bar: bool
) -> SqliteLedger:
    ledger = SqliteLedger(Path(folder) / "preflight.sqlite")
    try:
        event_loop.run(_predict_into(settings, source, ledger, progress_bar))
    except BaseException:
        ledger.close()
        raise
    return ledger


def run_check(
    settings: Settings,
    source: OrderInput,
    out: TextIO,
    fmt: str,
    outcome: str | None,
    *,
    progress_bar: bool = False,
) -> int:
    """Predict, print the report; 0 when every order would end cancelled or already
    cancelled, else 1."""
    with tempfile.TemporaryDirectory(prefix="cancel-orders-check-") as folder:
        ledger = _predicted(settings, source, folder, progress_bar)
        try:
            label = f"preflight of {source.name} (predicted outcomes: nothing was cancelled)"
            write_report(ledger, out, fmt, outcome, label)
            counts, _ = ledger.counts()
        finally:
            ledger.close()
    failing = sum(n for name, n in counts.items() if Outcome(name) not in SUCCESS)
    return 0 if failing == 0 else 1


def predictions(
    settings: Settings, source: OrderInput, *, progress_bar: bool = False
) -> dict[str, str]:
    """Each order's predicted outcome (for `plan --check`)."""
    with tempfile.TemporaryDirectory(prefix="cancel-orders-check-") as folder:
        ledger = _predicted(settings, source, folder, progress_bar)
        try:
            return {str(row[0]): str(row[1]) for row in ledger.rows()}
        finally:
            ledger.close()
