"""The simulator's orders as the two GET endpoints show them, consistent with DELETE.

Orders named by a behaviour prefix (``NMO...``, ``SUB...``) look the way their DELETE answers.
``seeded`` orders ``SIM0000000001``... form a realistic book for the list endpoint: mixed types,
statuses, creation dates, processing indicators and carriers; DELETE answers each one from its
record (``CANNOT_CANCEL_NOT_MASTER_ORDER`` for a segment, ``R0008`` when submitted, ``R0009`` when
all its events are completed, ``ORDER_ALREADY_CANCELED`` when cancelled), and a cancellation
shows in both GETs at once.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

from worker.simulator.model import BEHAVIOURS

MAX_LIMIT = 50
DEFAULT_LIMIT = 10
TYPES = (
    "Master",
    "Elementary",
    "SegmentTerminalEntrepot",
    "SegmentEntrepotDepot",
    "SegmentDepotEntrepot",
    "SegmentEntrepotTerminal",
    "SegmentTransfer",
)
STATUSES = ("Draft", "Valid", "Submitted", "InProcess", "Accepted", "Rejected", "Refused")
INDICATORS = ("Import", "Export", "Transfer")
CARRIERS = ("CMA", "MSC", "MAE", "HLC")
NOT_CANCELLABLE = {"Submitted": "R0008", "InProcess": "R0008"}
# filter parameter -> field of the order it compares with (exact match)
FIELD_FILTERS = {
    "status": "status",
    "processingIndicator": "processingIndicator",
    "carrierCode": "carrierCode",
    "transportOrderNumber": "transportOrderNumber",
    "containerNumber": "containerNumber",
}


@dataclass
class Order:
    """One seeded order."""

    order_id: str
    type: str
    status: str
    created: date
    indicator: str
    carrier: str
    events_completed: bool

    def view(self) -> dict[str, object]:
        """The order as the API shows it."""
        n = int(self.order_id[3:])
        return {
            "customerOrderId": self.order_id,
            "type": self.type,
            "status": self.status,
            "creationDate": f"{self.created.isoformat()}T{n % 24:02d}:{n % 60:02d}:00Z",
            "processingIndicator": self.indicator,
            "carrierCode": self.carrier,
            "transportOrderNumber": f"TON{n:07d}",
            "containerNumber": f"{self.carrier}U{n:07d}",
            "events": [
                {"type": "Lading", "completed": True},
                {"type": "Delivery", "completed": self.events_completed},
            ],
        }


class OrderBook:
    """The seeded orders, and views of the behaviour-named ones."""

    def __init__(self, seeded: int, rng: random.Random) -> None:
        today = datetime.now(UTC).date()
        self.orders: dict[str, Order] = {}
        for n in range(1, seeded + 1):
            status = rng.choices((*STATUSES, "Cancelled"), (40, 20, 8, 5, 12, 3, 2, 10))[0]
            self.orders[f"SIM{n:010d}"] = Order(
                order_id=f"SIM{n:010d}",
                type=rng.choices(TYPES, (80, 8, 3, 3, 2, 2, 2))[0],
                status=status,
                created=today - timedelta(days=rng.randrange(0, 120)),
                indicator=rng.choice(INDICATORS),
                carrier=rng.choice(CARRIERS),
                events_completed=status == "Accepted" and rng.random() < 0.5,
            )

    def cancel(self, order_id: str) -> str | None:
        """DELETE on a seeded order: None when cancelled now, else the API's error code."""
        order = self.orders[order_id]
        if order.type != "Master":
            return "CANNOT_CANCEL_NOT_MASTER_ORDER"
        if order.status == "Cancelled":
            return "ORDER_ALREADY_CANCELED"
        if order.status in NOT_CANCELLABLE:
            return NOT_CANCELLABLE[order.status]
        if order.events_completed:
            return "R0009"
        order.status = "Cancelled"
        return None

    def view(self, order_id: str, cancelled: bool) -> dict[str, object] | None:
        """GET /customer-orders/{id}'s body; None when the order does not exist."""
        seeded = self.orders.get(order_id)
        if seeded is not None:
            return seeded.view()
        detail = BEHAVIOURS.get(order_id[:3], ("normal", ""))[1]
        if detail in {"CUSTOMER_ORDER_NOT_FOUND", "404"}:
            return None
        digest = hashlib.sha256(order_id.encode()).digest()
        status = ("Draft", "Valid")[digest[0] % 2]  # cancellable
        if detail == "R0008":
            status = "Submitted"
        if cancelled or detail == "ORDER_ALREADY_CANCELED":
            status = "Cancelled"
        created = datetime.now(UTC).date() - timedelta(days=digest[1] % 90)
        return {
            "customerOrderId": order_id,
            "type": "Elementary" if detail == "CANNOT_CANCEL_NOT_MASTER_ORDER" else "Master",
            "status": status,
            "creationDate": f"{created.isoformat()}T08:00:00Z",
            "events": [{"type": "Delivery", "completed": detail == "R0009"}],
        }

    def search(self, query: Mapping[str, str]) -> dict[str, object] | str:
        """GET /customer-orders's body, or the API's error code for bad parameters."""
        try:
            limit = int(query.get("limit", str(DEFAULT_LIMIT)))
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
        wanted = {field: query[param] for param, field in FIELD_FILTERS.items() if query.get(param)}
        items = [
            view
            for order in self.orders.values()
            if _matches(view := order.view(), wanted, start, end)
        ]
        if query.get("desc", "").lower() == "true":
            items.reverse()
        page = items[offset : offset + min(limit, MAX_LIMIT)]
        return {"total": len(items), "returned": len(page), "first": offset, "items": page}


def _day(value: str | None) -> date | None:
    return date.fromisoformat(value[:10]) if value else None


def _matches(
    order: dict[str, object], wanted: dict[str, str], start: date | None, end: date | None
) -> bool:
    created = str(order["creationDate"])[:10]
    return (
        all(order.get(field) == value for field, value in wanted.items())
        and (start is None or created >= start.isoformat())
        and (end is None or created <= end.isoformat())
    )
