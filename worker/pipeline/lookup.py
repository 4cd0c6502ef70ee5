"""The GET before a DELETE: for an order an earlier request may have reached (a run that was
killed, a queue entry delivered before), and for every order under ``--require-status``.

Only the API's own word settles an order without a DELETE: shown `Cancelled` (by an earlier
request, or by anyone: `already_cancelled`, a success, as `plan --check` predicts), or the API's
CUSTOMER_ORDER_NOT_FOUND. Under --require-status an order whose status is not one of those
required (compared without regard to case) is `skipped` (PRECONDITION_STATUS, the status seen
in the message), and one whose status cannot be read is not sent either.
"""

from __future__ import annotations

from collections.abc import Callable

from yarl import URL

from worker.api.connection import Reader, RetriesExhaustedError
from worker.domain.answer import Answer
from worker.domain.models import Outcome, Result
from worker.pipeline.order import OrderState

PRECONDITION = "PRECONDITION_STATUS"
SETTLED = "found so by GET before sending again (an earlier request may have reached it)"
LOOKED_UP = "found so by GET before sending (--require-status)"


async def before_sending(
    reader: Reader,
    state: OrderState,
    url: URL,
    required: frozenset[str] | None,
    noted: Callable[[Answer], None] | None = None,
) -> Result | None:
    """The order's result without a DELETE, or None to send it. Raises what the reader raises
    (StoppingError, FatalApiError) but for a look-up that failed on every attempt."""
    try:
        answer, body = await reader.get(url, noted)
    except RetriesExhaustedError as exc:
        if required is None:
            return None  # the DELETE's answer is the authority
        failed = exc.answer
        return Result(
            state.order_id,
            Outcome.RETRYABLE_FAILED,
            failed.status,
            PRECONDITION,
            "its status could not be read before sending (--require-status): not sent",
        )
    status = body.get("status") if isinstance(body, dict) else None
    order = state.order_id
    if answer.code == "CUSTOMER_ORDER_NOT_FOUND":
        why = SETTLED if state.verify else LOOKED_UP
        return Result(order, Outcome.NOT_FOUND, answer.status, answer.code, why)
    if isinstance(status, str) and status.lower() == "cancelled":
        why = SETTLED if state.verify else LOOKED_UP
        return Result(order, Outcome.ALREADY_CANCELLED, 200, "ORDER_ALREADY_CANCELED", why)
    if required is not None and not (isinstance(status, str) and status.lower() in required):
        seen = f"status {status}" if status else f"no status (HTTP {answer.status})"
        return Result(order, Outcome.SKIPPED, answer.status, PRECONDITION, f"{seen}: not sent")
    return None
