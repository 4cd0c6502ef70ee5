"""The simulator's data: settings, behaviours by ID prefix, what it saw, and answer bodies."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from urllib.parse import unquote

from aiohttp import web

JSON = "application/json"

# prefix -> (kind, detail). Kinds: code (400 with that code, every time), once (that fault the
# first N times, then 200), always (that fault every time), fatal codes and gateway answers.
BEHAVIOURS: dict[str, tuple[str, str]] = {
    "ALR": ("code", "ORDER_ALREADY_CANCELED"),
    "NFD": ("code", "CUSTOMER_ORDER_NOT_FOUND"),
    "NMO": ("code", "CANNOT_CANCEL_NOT_MASTER_ORDER"),
    "CTR": ("code", "CANNOT_CANCEL_ORDER_WITH_ASSOCIATED_CONTAINER"),
    "SUB": ("code", "R0008"),
    "DLV": ("code", "R0009"),
    "NST": ("code", "NOT_SUPPORTED_ORDER_TYPE"),
    "UNK": ("code", "SOMETHING_NEW"),
    "ECH": ("echo", "SOMETHING_NEW"),  # a careless API that echoes the credentials it got
    "DEP": ("deep", "400"),  # a 400 whose body nests 5,000 arrays deep
    "FRM": ("formula", "SOMETHING_NEW"),  # a message a spreadsheet would run as a formula
    "WFM": ("code", "WRONG_FORMAT"),
    "USR": ("code", "USER_ID_INVALID"),
    "ORG": ("code", "ORGANIZATION_NOT_FOUND"),
    "ACT": ("code", "ORGANIZATION_ACTOR_CODE_INVALID"),
    "GON": ("status", "404"),  # the gateway's bare 404: fatal (as a wrong base URL answers)
    "NOF": ("code404", "CUSTOMER_ORDER_NOT_FOUND"),  # a 404 with the API's own error object
    "FBD": ("status", "403"),
    "ERR": ("status", "500"),
    "CFL": ("transient", "conflict"),
    "TMP": ("transient", "503"),
    "HRS": ("transient", "503hour"),  # 503 with Retry-After: 3600
    "HTM": ("transient", "502html"),
    "BAD": ("transient", "500json"),
    "RST": ("transient", "reset"),
    "SLO": ("transient", "stall"),
    "THR": ("transient", "429"),
    "QTA": ("transient", "quota"),
}
NOT_FINAL = {
    "conflict",
    "USER_ID_INVALID",
    "ORGANIZATION_NOT_FOUND",
    "ORGANIZATION_ACTOR_CODE_INVALID",
}


@dataclass
class SimStats:
    """What the simulator saw, for tests and rehearsals."""

    deletes: Counter[str] = field(default_factory=Counter)
    gets: Counter[str] = field(default_factory=Counter)  # GET /customer-orders/{id}, per order
    statuses: Counter[int] = field(default_factory=Counter)
    arrivals: list[float] = field(default_factory=list)  # monotonic time of each API request
    token_requests: int = 0
    resent_final: int = 0  # DELETEs for an order that had already had a final answer
    outage_answers: int = 0  # requests failed by an outage (Simulator.outage)
    answers: list[tuple[float, str, int]] = field(default_factory=list)  # (time, order, status)
    in_flight: int = 0  # DELETEs being answered now
    max_in_flight: int = 0  # the most DELETEs ever being answered at once
    # every API request: (method, order ID or "", its X-Request-ID, the simulator's own id)
    journal: list[tuple[str, str, str, str]] = field(default_factory=list)
    traceparents: dict[str, str] = field(default_factory=dict)  # X-Request-ID -> traceparent

    def max_in_window(self, window_s: float = 1.0) -> int:
        """The most API requests that arrived within any sliding window of this length."""
        times = sorted(self.arrivals)
        best, start = 0, 0
        for end, t in enumerate(times):
            while t - times[start] >= window_s:
                start += 1
            best = max(best, end - start + 1)
        return best

    def after_throttling(self) -> tuple[int, float]:
        """(the most requests that arrived within any sliding second after the first 429, the
        rate of 200 answers over their span): how well a client keeps under a gateway limit."""
        throttled = [t for t, _, status in self.answers if status == 429]
        ok = sorted(t for t, _, status in self.answers if status == 200)
        rate = (len(ok) - 1) / (ok[-1] - ok[0]) if len(ok) > 1 and ok[-1] > ok[0] else 0.0
        if not throttled:
            return 0, rate
        later = SimStats(arrivals=[t for t in self.arrivals if t > min(throttled)])
        return later.max_in_window(1.0), rate

    def as_dict(self) -> dict[str, object]:
        """JSON-ready view."""
        times = self.arrivals
        span = (max(times) - min(times)) if len(times) > 1 else 0.0
        after, ok_rate = self.after_throttling()
        return {
            "deletes": sum(self.deletes.values()),
            "orders": len(self.deletes),
            "resent_final": self.resent_final,
            "outage_answers": self.outage_answers,
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
            "max_per_second": self.max_in_window(1.0),
            "span_s": round(span, 3),
            "token_requests": self.token_requests,
            "max_in_flight": self.max_in_flight,
            "max_per_second_after_429": after,
            "cancelled_per_s": round(ok_rate, 2),
            "per_order": dict(self.deletes),
        }


def order_id_of(request: web.Request, base_path: str) -> str | None:
    """The one path segment after /customer-orders/, decoded; None if there is not exactly one."""
    raw = request.raw_path.split("?", 1)[0]
    if raw.startswith(("http://", "https://")):  # absolute form, as through a forward proxy
        raw = "/" + raw.split("/", 3)[3] if raw.count("/") >= 3 else "/"
    prefix = base_path + "/customer-orders/"
    if not raw.startswith(prefix):
        return None
    segment = raw[len(prefix) :]
    if not segment or "/" in segment:
        return None
    return unquote(segment)


def api_error(code: str, message: str | None = None, status: int = 400) -> web.Response:
    body = {"timestamp": datetime.now(UTC).isoformat(), "code": code, "message": message}
    return web.json_response(body, status=status)


def apim(status: int, message: str, retry_after: int | None = None) -> web.Response:
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
    return web.Response(
        status=status,
        text=json.dumps({"statusCode": status, "message": message}),
        content_type=JSON,
        headers=headers,
    )
