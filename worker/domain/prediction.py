"""What a DELETE would answer, told from what ``GET /customer-orders/{id}`` answered (pure).

Used by `check` for every order.
"""

from __future__ import annotations

from collections.abc import Mapping

from worker.domain.answer import Answer
from worker.domain.classifier import OutcomeTable
from worker.domain.models import Outcome, Result

NOT_CANCELLABLE_STATUS = {"Submitted": "R0008", "InProcess": "R0008"}


def predict(order_id: str, answer: Answer, body: object, table: OutcomeTable) -> Result:
    """What DELETE would answer, from what GET answered (pure)."""
    if answer.status == 404:
        return Result(order_id, Outcome.NOT_FOUND, 404, "HTTP_404", "not found")
    if answer.status == 400:
        verdict = table.classify(400, answer.code, None)
        outcome = verdict.outcome or Outcome.REJECTED
        return Result(order_id, outcome, 400, answer.code, answer.message)
    if not isinstance(body, Mapping):
        return Result(order_id, Outcome.RETRYABLE_FAILED, 200, "UNREADABLE", "unreadable answer")
    kind, status = body.get("type"), body.get("status")
    if kind is not None and kind != "Master":
        code = "CANNOT_CANCEL_NOT_MASTER_ORDER"
        return Result(order_id, Outcome.REJECTED, 200, code, f"type {kind}: not a Master order")
    if status == "Cancelled":
        return Result(order_id, Outcome.ALREADY_CANCELLED, 200, "ORDER_ALREADY_CANCELED")
    if isinstance(status, str) and status in NOT_CANCELLABLE_STATUS:
        code = NOT_CANCELLABLE_STATUS[status]
        return Result(order_id, Outcome.REJECTED, 200, code, f"status {status}")
    events = body.get("events")
    if isinstance(events, list) and events and all(_completed(e) for e in events):
        return Result(order_id, Outcome.REJECTED, 200, "R0009", "all its events are completed")
    return Result(order_id, Outcome.CANCELLED, 200, None, f"would cancel (status {status})")


def _completed(event: object) -> bool:
    return isinstance(event, Mapping) and event.get("completed") is True
