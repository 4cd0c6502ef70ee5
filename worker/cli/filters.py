"""The selection filters' flags (`select`, `run --select`, `plan --select`), apart from the
selection itself so that building the parser imports no HTTP client."""

from __future__ import annotations

import argparse

from worker.domain.models import ORDER_STATUSES

# the values the API's order list filters on (GET /customer-orders)
INDICATORS = ("Import", "Export", "Transfer")
STATUSES = ORDER_STATUSES
FILTER_DESTS = (  # the filters' flags, as argparse names them: the one list of them
    "status",
    "created_after",
    "created_before",
    "older_than",
    "processing_indicator",
    "carrier_code",
    "transport_order_number",
    "container_number",
)


def add_filter_arguments(parser: argparse.ArgumentParser) -> None:
    """The selection filters, for `select` and `run --select`."""
    group = parser.add_argument_group("selection filters (GET /customer-orders; days in UTC)")
    group.add_argument(
        "--status",
        action="append",
        default=[],
        choices=STATUSES,
        metavar="S",
        help=f"order status, one of {', '.join(STATUSES)} (repeat for several)",
    )
    group.add_argument("--created-after", metavar="DAY", help="created on or after YYYY-MM-DD")
    before = group.add_mutually_exclusive_group()
    before.add_argument("--created-before", metavar="DAY", help="created before YYYY-MM-DD")
    before.add_argument(
        "--older-than", metavar="AGE", help="created before today minus AGE days, e.g. 30d"
    )
    group.add_argument("--processing-indicator", choices=INDICATORS, metavar="|".join(INDICATORS))
    group.add_argument("--carrier-code", metavar="C")
    group.add_argument("--transport-order-number", metavar="N")
    group.add_argument("--container-number", metavar="N")
