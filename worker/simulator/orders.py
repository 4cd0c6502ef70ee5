"""The simulator's orders as the two GET endpoints show them, consistent with DELETE."""

from __future__ import annotations

import hashlib
import random
from collections.abc import Mapping
from datetime import UTC, date, datetime, timedelta

from worker.simulator.model import BEHAVIOURS, STATUSES

MAX_LIMIT = 50


class OrderBook:
    """Type, status and creation date of each order, derived from its ID (and whether it has
    been cancelled); ``seeded`` orders ``SIM0000000001``... exist for the list endpoint."""

    def __init__(self, seeded: int, rng: random.Random) -> None:
        today = datetime.now(UTC).date()
        self.created: dict[str, date] = {
            f"SIM{n:010d}": today - timedelta(days=rng.randrange(0, 120))
            for n in range(1, seeded + 1)
        }

    def view(self, order_id: str, cancelled: bool) -> dict[str, object] | None:
        """GET /customer-orders/{id}'s body; None when the order does not exist."""
        detail = BEHAVIOURS.get(order_id[:3], ("normal", ""))[1]
        if detail in {"CUSTOMER_ORDER_NOT_FOUND", "404"}:
            return None
        digest = hashlib.sha256(order_id.encode()).digest()
        status = STATUSES[digest[0] % 2]  # Draft or Valid: cancellable
        if detail == "R0008":
            status = "Submitted"
        if cancelled or detail == "ORDER_ALREADY_CANCELED":
            status = "Cancelled"
        created = self.created.get(order_id) or (
            datetime.now(UTC).date() - timedelta(days=digest[1] % 90)
        )
        return {
            "customerOrderId": order_id,
            "type": "Elementary" if detail == "CANNOT_CANCEL_NOT_MASTER_ORDER" else "Master",
            "status": status,
            "creationDate": created.isoformat(),
        }

    def search(self, query: Mapping[str, str], cancelled: set[str]) -> dict[str, object] | str:
        """GET /customer-orders's body, or the API's error code for bad parameters."""
        try:
            limit = int(query.get("limit", "10"))
            offset = int(query.get("offset", "0"))
        except ValueError:
            return "SEARCH_DATE_ERROR"
        if limit <= 0:
            return "LIMIT_NONPOSITIVE"
        if offset < 0:
            return "OFFSET_NEGATIVE"
        try:
            start = _day(query.get("startDate"))
            end = _day(query.get("endDate"))
        except ValueError:
            return "SEARCH_DATE_ERROR"
        views = (self.view(i, i in cancelled) for i in sorted(self.created))
        items = [o for o in views if o is not None and _matches(o, query.get("status"), start, end)]
        page = items[offset : offset + min(limit, MAX_LIMIT)]
        return {"total": len(items), "returned": len(page), "first": offset, "items": page}


def _day(value: str | None) -> date | None:
    return date.fromisoformat(value[:10]) if value else None


def _matches(
    order: dict[str, object], status: str | None, start: date | None, end: date | None
) -> bool:
    created = str(order["creationDate"])
    return (
        (not status or order["status"] == status)
        and (start is None or created >= start.isoformat())
        and (end is None or created <= end.isoformat())
    )
