"""`cancel-orders check INPUT`: predict each order's outcome with ``GET /customer-orders/{id}``,
at the rate limit, without cancelling anything; reported in the ledger report's formats."""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path
from typing import TextIO

import structlog

from worker.api.connection import Reader, RetriesExhaustedError, connect
from worker.domain.classifier import error_code_for
from worker.domain.models import SUCCESS, Outcome, Result, new_run_id
from worker.domain.prediction import predict
from worker.ledger import Ledger, SqliteLedger
from worker.reports.report import write_report
from worker.runtime import loop as event_loop
from worker.runtime.clock import SystemClock
from worker.settings import Settings
from worker.sources import OrderInput

log = structlog.get_logger(__name__)

BATCH = 500


async def check_into(settings: Settings, source: OrderInput, ledger: Ledger) -> None:
    """Predict every order of the input into ``ledger`` (a scratch ledger)."""
    clock = SystemClock()
    api = connect(settings, clock)
    reader = Reader.for_settings(api, settings, clock)
    run_id = new_run_id()
    gate = asyncio.Semaphore(settings.concurrency)

    async def one(order_id: str) -> Result:
        async with gate:
            try:
                answer, body = await reader.get(api.client.order_url(order_id))
            except RetriesExhaustedError as exc:
                last = exc.answer
                code = error_code_for(last.status, last.code, last.failure)
                return Result(order_id, Outcome.RETRYABLE_FAILED, last.status, code, str(exc))
        result = predict(order_id, answer, body, reader.table)
        log.debug("prediction", **result.log_fields())  # the report that follows has them all
        return result

    try:
        for batch in source.batches(BATCH):
            plan = ledger.claim(batch, run_id, force=True)
            results = await asyncio.gather(*(one(order_id) for order_id in plan.to_send))
            ledger.record([*plan.invalid, *results], run_id)
    finally:
        await api.close()


def run_check(
    settings: Settings, source: OrderInput, out: TextIO, fmt: str, outcome: str | None
) -> int:
    """Predict, print the report; 0 when every order would end cancelled or already
    cancelled, else 1."""
    with tempfile.TemporaryDirectory(prefix="cancel-orders-check-") as folder:
        ledger = SqliteLedger(Path(folder) / "preflight.sqlite")
        try:
            event_loop.run(check_into(settings, source, ledger))
            label = f"preflight of {source.name} (predicted outcomes: nothing was cancelled)"
            write_report(ledger, out, fmt, outcome, label)
            counts, _ = ledger.counts()
        finally:
            ledger.close()
    failing = sum(n for name, n in counts.items() if Outcome(name) not in SUCCESS)
    return 0 if failing == 0 else 1


def predictions(settings: Settings, source: OrderInput) -> dict[str, str]:
    """Each order's predicted outcome (for `plan --check`)."""
    with tempfile.TemporaryDirectory(prefix="cancel-orders-check-") as folder:
        ledger = SqliteLedger(Path(folder) / "preflight.sqlite")
        try:
            event_loop.run(check_into(settings, source, ledger))
            return {str(row[0]): str(row[1]) for row in ledger.rows()}
        finally:
            ledger.close()
