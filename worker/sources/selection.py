"""Selection: the order IDs that match filters, paged out of ``GET /customer-orders``.

Paging by offset is fragile while orders change: cancelling a `Draft` order removes it from a
``status=Draft`` filter and moves every later order one place down, so a forward walk skips one
order per cancellation. The walk here reads the first page (for ``total``), then goes from the
last page back to the first: an order that moves down after its page was read is read again
(and deduplicated), never skipped. If ``total`` grows during a walk (new orders), the walk is
repeated until one sees no new order. The whole selection is collected before anything is
cancelled. Only `Master` orders can be cancelled: the others are counted and left out.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import date, timedelta

import structlog

from worker.api.client import MouvoneClient
from worker.api.connection import Reader
from worker.domain.errors import ConfigError, FatalApiError
from worker.settings.values import MAX_DAYS

log = structlog.get_logger(__name__)

PAGE = 50  # the API's largest page
MAX_WALKS = 5
MAX_TOTAL = 1_000_000  # a selection larger than this is refused: narrow the filters
_AGE = re.compile(r"^\s*(\d+)\s*d?\s*$")


def parse_day(text: str, flag: str) -> date:
    """A YYYY-MM-DD day; ConfigError naming the flag otherwise."""
    try:
        return date.fromisoformat(text.strip())
    except ValueError:
        raise ConfigError(f"{flag} {text!r}: expected a day as YYYY-MM-DD") from None


def parse_age(text: str, today: date) -> date:
    """``30d`` (or ``30``): the first day not included, today minus that many days."""
    found = _AGE.match(text)
    if not found:
        raise ConfigError(f"--older-than {text!r}: expected a number of days, like 30d")
    days = int(found.group(1))
    if days > MAX_DAYS:
        raise ConfigError(f"--older-than {text!r}: at most {MAX_DAYS} days")
    return today - timedelta(days=days)


@dataclass(frozen=True)
class Filters:
    """What to select. Days are UTC; ``created_before`` is excluded, ``created_after`` included."""

    statuses: tuple[str, ...] = ()
    created_after: date | None = None
    created_before: date | None = None
    processing_indicator: str | None = None
    carrier_code: str | None = None
    transport_order_number: str | None = None
    container_number: str | None = None

    def queries(self) -> list[dict[str, str]]:
        """One query per status (the API takes one), or one without."""
        base: dict[str, str] = {}
        if self.created_after is not None:
            base["startDate"] = self.created_after.isoformat()
        if self.created_before is not None:  # the API's endDate includes its whole day
            base["endDate"] = (self.created_before - timedelta(days=1)).isoformat()
        fields = {
            "processingIndicator": self.processing_indicator,
            "carrierCode": self.carrier_code,
            "transportOrderNumber": self.transport_order_number,
            "containerNumber": self.container_number,
        }
        base.update({param: value for param, value in fields.items() if value})
        if not self.statuses:
            return [base]
        return [{**base, "status": status} for status in dict.fromkeys(self.statuses)]

    def matches(self, item: Mapping[str, object]) -> bool:
        """The filters checked again on an item, for the fields it shows."""
        status = item.get("status")
        if self.statuses and isinstance(status, str) and status not in self.statuses:
            return False
        created = item.get("creationDate")
        if isinstance(created, str) and len(created) >= 10:
            day = created[:10]
            if self.created_after is not None and day < self.created_after.isoformat():
                return False
            if self.created_before is not None and day >= self.created_before.isoformat():
                return False
        return True


@dataclass
class SelectionSummary:
    """What a selection found."""

    matched: int = 0
    not_master: Counter[str] = field(default_factory=Counter)  # type -> orders left out
    mismatched: int = 0  # items the API returned that do not match the filters
    pages: int = 0
    walks: int = 0
    total_changes: int = 0

    def as_dict(self) -> dict[str, object]:
        """The `selection_summary` event's fields."""
        return {
            "matched": self.matched,
            "not_master": dict(sorted(self.not_master.items())),
            "mismatched": self.mismatched,
            "pages": self.pages,
            "walks": self.walks,
            "total_changes": self.total_changes,
        }


class Selector:
    """Pages through the list endpoint and hands each matching Master order's ID to ``emit``."""

    def __init__(
        self,
        reader: Reader,
        client: MouvoneClient,
        filters: Filters,
        emit: Callable[[str], None],
        on_page: Callable[[SelectionSummary], None] = lambda _s: None,
    ) -> None:
        self._reader = reader
        self._client = client
        self._filters = filters
        self._emit = emit
        self._on_page = on_page
        self._seen: set[str] = set()
        self.summary = SelectionSummary()

    async def run(self) -> SelectionSummary:
        """Select everything; FatalApiError on an answer that makes the selection unusable."""
        for query in self._filters.queries():
            for _ in range(MAX_WALKS):
                if not await self._walk(query):
                    break
            else:
                log.warning("selection_still_growing", query=query, walks=MAX_WALKS)
        return self.summary

    async def _walk(self, query: dict[str, str]) -> bool:
        """One walk, last page to first; True if it found orders the last walk had not."""
        self.summary.walks += 1
        before = len(self._seen)
        total, first = await self._page(query, 0, None)
        _check_total(total, first)
        grew = False
        offset = ((total - 1) // PAGE) * PAGE if total > 0 else 0
        while offset >= 0 and total > 0:
            now, found = await self._page(query, offset, total)
            grew = grew or now > total
            total = now
            if found == 0 and offset > 0:
                if now > offset:  # "there are more" and yet nothing here: not to be trusted
                    raise FatalApiError(
                        f"the order search announced {now} orders, but its page at offset "
                        f"{offset} is empty: its total cannot be trusted (narrow the filters)"
                    )
                offset = ((now - 1) // PAGE) * PAGE if now > 0 else -1  # the set shrank
                continue
            offset -= PAGE
        return grew and len(self._seen) > before

    async def _page(
        self, query: dict[str, str], offset: int, expected: int | None
    ) -> tuple[int, int]:
        """Read one page, emit its new matching orders; (the total it reported, its items)."""
        url = self._client.list_url({**query, "offset": str(offset), "limit": str(PAGE)})
        answer, body = await self._reader.get(url)
        if answer.status != 200 or not isinstance(body, dict):
            detail = answer.code or f"HTTP {answer.status}"
            why = f" ({answer.message})" if answer.message else ""
            raise FatalApiError(f"the order search was refused: {detail}{why}")
        self.summary.pages += 1
        total = body.get("total")
        items = body.get("items")
        if not isinstance(total, int) or not isinstance(items, list):
            raise FatalApiError("the order search answered without total or items")
        if expected is not None and total != expected:
            self.summary.total_changes += 1
            log.info("selection_total_changed", query=query, was=expected, now=total)
        for item in items:
            if isinstance(item, dict):
                await self._take(item)
        self._on_page(self.summary)
        return total, len(items)

    async def _take(self, item: dict[str, object]) -> None:
        order_id = item.get("customerOrderId")
        if not isinstance(order_id, str) or not order_id or order_id in self._seen:
            return
        self._seen.add(order_id)
        if not self._filters.matches(item):
            self.summary.mismatched += 1
            return
        kind = item.get("type")
        if kind is None:  # a list without types: the order itself tells
            answer, body = await self._reader.get(self._client.order_url(order_id))
            if answer.status == 200 and isinstance(body, dict):
                kind = body.get("type")
        if isinstance(kind, str) and kind != "Master":
            self.summary.not_master[kind] += 1
            return
        self.summary.matched += 1
        self._emit(order_id)


def _check_total(total: int, first_page: int) -> None:
    """The paging is bounded by what the pages return: a total that the first page contradicts
    (fewer items than a full page, yet more announced) or beyond MAX_TOTAL is not trusted, so
    that no offset is asked for that no page could have led to."""
    if first_page < PAGE and total > first_page:
        raise FatalApiError(
            f"the order search announced {total} orders, but its first page held {first_page}: "
            "its total cannot be trusted (narrow the filters)"
        )
    if total > MAX_TOTAL:
        raise FatalApiError(
            f"the order search announced {total} orders, more than a selection may hold "
            f"({MAX_TOTAL}): its total cannot be trusted (narrow the filters)"
        )
