"""What the tool reads from and writes into headers beyond the credentials: a request id for
every request, the answer's own request id, and a gateway's rate limit."""

from __future__ import annotations

import math
import uuid
from collections.abc import Mapping

# Where a gateway or an API puts its own id of a request (Azure API Management, then others).
RESPONSE_ID_HEADERS = ("x-ms-request-id", "apim-request-id", "request-id", "x-request-id")


def response_id(headers: Mapping[str, str]) -> str | None:
    """The answer's own request id, from the first of RESPONSE_ID_HEADERS it carries."""
    for name in RESPONSE_ID_HEADERS:
        found = headers.get(name)
        if found:
            return found[:200]
    return None


def limit_per_s(headers: Mapping[str, str]) -> float | None:
    """The gateway's request limit per second, when a 429 says it: ``RateLimit-Policy:
    50;w=1`` (the IETF draft), else ``RateLimit-Limit`` or ``X-RateLimit-Limit`` with the window
    of ``RateLimit-Policy`` or one second; None when it does not."""
    policy = headers.get("RateLimit-Policy") or headers.get("X-RateLimit-Policy") or ""
    first = policy.split(",", 1)[0]
    quota, window = _number(first.split(";", 1)[0]), 1.0
    for part in first.split(";")[1:]:
        key, _, value = part.strip().partition("=")
        if key == "w" and (seconds := _number(value)) is not None and seconds > 0:
            window = seconds
    if quota is None:
        quota = _number(headers.get("RateLimit-Limit") or headers.get("X-RateLimit-Limit") or "")
    return quota / window if quota is not None and quota > 0 else None


def _number(text: str) -> float | None:
    try:
        value = float(text.strip())
    except ValueError:
        return None
    return value if math.isfinite(value) else None


class _RequestIds:
    """A new UUID for every request, cheaply: 74 random bits drawn once per process (in the
    shape of a version 4 UUID) and a counter in its last 48 bits, unique within the process and
    across processes (uuid4() for every request costs more than the rest of building it)."""

    def __init__(self) -> None:
        base = uuid.uuid4().hex
        self._prefix = f"{base[:8]}-{base[8:12]}-{base[12:16]}-{base[16:20]}-"
        self._counter = int(base[20:], 16)

    def __call__(self) -> str:
        self._counter = (self._counter + 1) & 0xFFFFFFFFFFFF
        return "%s%012x" % (self._prefix, self._counter)  # noqa: UP031 - faster


request_ids = _RequestIds()


def trace_id(request_id: str) -> str:
    """The W3C trace id of a request: its X-Request-ID's 128 bits as 32 hex digits (one value
    finds the request in the tool's attempt log and in the gateway's traces)."""
    return request_id.replace("-", "")


def traceparent(request_id: str) -> str:
    """The W3C ``traceparent`` header sent with the request whose X-Request-ID this is: version
    00, its trace id, a span id of the id's last 64 bits, sampled."""
    trace = trace_id(request_id)
    return f"00-{trace}-{trace[16:]}-01"
