"""The results stream: the pool's sink in queue mode.

Each result is written and its entry acknowledged in one script, which first checks that the
entry is still this consumer's; a `pending` result leaves the entry for another consumer. The
attempts of an order are kept with it and written in its result entry (and, with
``--ledger postgresql://``, recorded in the shared ledger before the entry is acknowledged)."""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import partial

import structlog

from worker.domain.answer import Answer
from worker.domain.models import FINAL, Outcome, Result
from worker.ledger.audit import attempt_row
from worker.ledger.schema import ATTEMPT_COLUMNS
from worker.pipeline.control import RunControl
from worker.pipeline.order import OrderState
from worker.pipeline.tally import Tally
from worker.queue.streams import Streams, patiently, result_fields
from worker.runtime.clock import iso_from_epoch, now_iso
from worker.sinks.ledger_copy import LedgerCopy

log = structlog.get_logger(__name__)


class ResultsStream:
    """Results out to the results stream, each entry acknowledged with its result."""

    def __init__(
        self,
        streams: Streams,
        run_id: str,
        control: RunControl,
        tally: Tally,
        release: Callable[[str], None],
    ) -> None:
        self._streams = streams
        self._consumer = streams.names.consumer
        self._run_id = run_id
        self._control = control
        self._tally = tally
        self._release = release  # the entry is no longer held by this consumer
        self.copy: LedgerCopy | None = None  # --ledger postgresql://: results recorded there

    async def record(self, state: OrderState, result: Result) -> None:
        """Write the result and acknowledge; a `pending` one leaves the entry for later."""
        if result.outcome is Outcome.PENDING:
            if state.lost:
                log.info("entry_not_ours", entry_id=state.handle, order_id=state.order_id)
                self._release(state.handle)
            return  # stopping or lost: the entry stays for another consumer
        dead = "attempts exhausted" if result.outcome is Outcome.RETRYABLE_FAILED else ""
        await self.finish(state.handle, state.order_id, result, dead, state.tried)

    def brake(self, pause: Callable[[float], None]) -> None:
        """Never: each result is written before its worker takes another order."""

    def interrupted(self, state: OrderState, result: Result) -> None:
        """A worker stopped before the answer: the entry stays pending, for a claim."""

    def attempt(self, state: OrderState, method: str, number: int, answer: Answer) -> None:
        """One answered request: kept with the order, written in its result entry."""
        if state.tried is None:
            state.tried = []
        state.tried.append(attempt_row(self._run_id, state.order_id, method, number, answer))

    async def finish(
        self,
        entry_id: str,
        order_id: str,
        result: Result | None,
        dead_reason: str = "",
        tried: list[tuple[object, ...]] | None = None,
    ) -> None:
        """Write the result (None: none), maybe a dead letter, and acknowledge, atomically."""
        fields: list[str] = []
        final = ""
        if result is not None:
            final = result.outcome.value if result.outcome in FINAL else ""
            fields = result_fields(
                {
                    "order_id": result.order_id,
                    "outcome": result.outcome.value,
                    "http_status": result.http_status,
                    "error_code": result.error_code,
                    "message": result.message,
                    "attempts": result.attempts,
                    "consumer": self._consumer,
                    "finished_at": now_iso(),
                    "attempt_log": attempt_log(tried or []),
                }
            )
        written_id = order_id if result is None else result.order_id  # an invalid ID: cut
        if result is not None and self.copy is not None:
            await self.copy.write(result, tried)  # before the acknowledgement, never after
        done = await patiently(
            partial(self._streams.finish, entry_id, written_id, final, dead_reason, fields),
            self._control.hurry_event.is_set,
            "finish",
        )
        if result is not None and done:
            self._tally.count(result)
        elif done is False:
            log.warning("entry_lost_before_ack", entry_id=entry_id, order_id=order_id)
        self._release(entry_id)


def attempt_log(tried: list[tuple[object, ...]]) -> str:
    """A result entry's attempts, as JSON objects (the ledger's attempt columns)."""
    rows = [dict(zip(ATTEMPT_COLUMNS, row, strict=True)) for row in tried]
    for row in rows:
        sent = row["sent_at"]
        if isinstance(sent, float):
            row["sent_at"] = iso_from_epoch(sent)
    return json.dumps(rows, separators=(",", ":"))
