"""What one request to the API produced: its answer, or a transport failure."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)  # not frozen: a frozen __init__ costs a call per field
class Answer:
    """What one request produced: an HTTP answer, or a transport failure."""

    status: int | None
    code: str | None = None
    message: str | None = None
    retry_after_s: float | None = None
    failure: str | None = None  # "timeout" | "connection" | "unreadable" | "abandoned"
    latency_ms: float = 0.0
    body: object = None  # a GET's 200: its JSON
    unreachable: str | None = None  # no connection could be made: host, port and why
    request_id: str = ""  # the X-Request-ID the tool sent with the request
    response_id: str | None = None  # the gateway's or the API's own request id, when it sent one
    sent_at: float = 0.0  # when the request left (seconds since the epoch)
    limit_per_s: float | None = None  # a 429: the gateway's limit, when its headers say it
