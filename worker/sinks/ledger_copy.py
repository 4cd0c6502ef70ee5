"""`consume --ledger postgresql://...`: each result the consumer writes to the results stream
is recorded in the shared ledger first, with its attempts, in group-committed batches; the
consumer's run is in its ``runs``. `report`, `runs`, `history` and `audit` then cover queue mode
from one place."""

from __future__ import annotations

from pathlib import Path

import structlog

from worker.domain.errors import ConfigError, LedgerError
from worker.domain.location import PostgresUrl
from worker.domain.models import Result, RunReport
from worker.ledger import check_target, ledger_at
from worker.pipeline.control import RunControl
from worker.settings import Settings
from worker.sinks.ledger import LedgerSink, LedgerThread

log = structlog.get_logger(__name__)


def check_ledger(settings: Settings, given: bool) -> None:
    """A consumer records to a PostgreSQL ledger only: the replicas of a group share it, where a
    file is one process's. The ledger belongs to one target, as for every command that sends:
    results recorded against another would make a later run skip orders never cancelled."""
    if given and isinstance(settings.ledger, Path):
        raise ConfigError(
            f"consume --ledger {settings.ledger}: the replicas of a group share their ledger; "
            "give a postgresql:// URL (results are in the results stream either way)"
        )
    if isinstance(settings.ledger, PostgresUrl):
        check_target(settings.ledger, settings.api_url)


class LedgerCopy:
    """The results and attempts of one consumer, copied into the shared ledger."""

    def __init__(self, settings: Settings, run_id: str, control: RunControl) -> None:
        self._settings = settings
        self._run_id = run_id
        self._control = control
        ledger = ledger_at(settings.ledger, claim_idle=settings.claim_idle)
        self._thread = LedgerThread(ledger)
        self._sink = LedgerSink(self._thread, run_id, None)  # the consumer counts them

    async def start(self) -> None:
        """Note the consumer's run (each result is then written by ``write``)."""
        ledger = self._thread.ledger
        await self._thread.call(ledger.begin_run, self._run_id, "consume", self._settings.api_url)

    async def write(self, result: Result, tried: list[tuple[object, ...]] | None) -> None:
        """Record one result and its attempts before its entry is acknowledged: a consumer
        killed between the two leaves the entry pending (another consumer looks the order up
        and finishes it), never an acknowledged result the ledger lacks. The writes of workers
        waiting together go in one transaction. A ledger that refuses stops the consumer; the
        result still goes to the results stream."""
        self._sink.attempts(tried or [])
        self._sink.add(result)
        try:
            await self._sink.flush()
        except LedgerError as exc:
            self._failed(str(exc))

    async def close(self, report: RunReport) -> None:
        """Write what is left (what a refused write kept), note how the consumer ended, close."""
        try:
            await self._sink.flush()
            ledger = self._thread.ledger
            await self._thread.call(
                ledger.end_run, self._run_id, report.exit_code, report.as_dict()
            )
        except LedgerError as exc:  # the results stream has them all
            log.error("ledger_copy_failed", error=str(exc), unrecorded=len(self._sink.unrecorded()))  # noqa: TRY400
        finally:
            self._thread.close()
            self._thread.ledger.close()

    def _failed(self, message: str) -> None:
        self._control.abort(f"ledger write failed: {message}")
