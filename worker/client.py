"""One HTTP call to MouvONE: what came back. Never raises for an answer or a network fault."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from urllib.parse import quote

import aiohttp
from yarl import URL

from worker.retry import parse_retry_after

MAX_ERROR_BODY = 64 * 1024  # error bodies are small JSON; never read more than this
MAX_MESSAGE = 500


@dataclass(frozen=True, slots=True)
class Answer:
    """What one request produced: an HTTP answer, or a transport failure."""

    status: int | None
    code: str | None = None
    message: str | None = None
    retry_after_s: float | None = None
    failure: str | None = None  # "timeout" | "connection" | "unreadable"
    latency_ms: float = 0.0


def order_url(base_url: str, order_id: str) -> URL:
    """``{base}/customer-orders/{id}`` with the ID as exactly one percent-encoded segment."""
    segment = quote(order_id, safe="").replace(".", "%2E")
    return URL(f"{base_url}/customer-orders/{segment}", encoded=True)


def new_session(concurrency: int) -> aiohttp.ClientSession:
    """The one session of a run: a connection limit, and no silent resend of a DELETE.

    aiohttp resends an idempotent request once when a kept-alive connection turns out to be
    closed (issue #10790). That resend would bypass the rate limiter and the attempt count, so it
    is switched off; the dispatcher retries through the limiter instead.
    """
    connector = aiohttp.TCPConnector(limit=concurrency + 2, limit_per_host=concurrency + 2)
    session = aiohttp.ClientSession(connector=connector, raise_for_status=False)
    session._retry_connection = False
    return session


class MouvoneClient:
    """Sends DELETE /customer-orders/{id} with both credentials."""

    def __init__(
        self, session: aiohttp.ClientSession, base_url: str, api_key: str, timeout_s: float
    ) -> None:
        self._session = session
        self._base_url = base_url
        self._api_key = api_key
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)

    async def cancel(self, order_id: str, token: str) -> Answer:
        """One DELETE; the answer, or the transport failure, as an Answer."""
        headers = {"Authorization": f"Bearer {token}", "Ocp-Apim-Subscription-Key": self._api_key}
        started = time.perf_counter()
        try:
            async with self._session.delete(
                order_url(self._base_url, order_id), headers=headers, timeout=self._timeout
            ) as resp:
                status = resp.status
                retry_after = parse_retry_after(resp.headers.get("Retry-After"))
                body = await _read_body(resp)
        except TimeoutError:
            return Answer(None, failure="timeout", latency_ms=_ms(started))
        except aiohttp.ClientPayloadError:
            return Answer(None, failure="unreadable", latency_ms=_ms(started))
        except aiohttp.ClientResponseError as exc:  # malformed status line or headers
            return Answer(exc.status or None, failure="unreadable", latency_ms=_ms(started))
        except (aiohttp.ClientError, OSError):
            return Answer(None, failure="connection", latency_ms=_ms(started))
        return _parse(status, body, retry_after, _ms(started))


async def _read_body(resp: aiohttp.ClientResponse) -> bytes:
    """The body, up to MAX_ERROR_BODY bytes. Reading it (a 200's too) lets the connection be
    reused; a longer body is cut, and its connection closed rather than read to the end."""
    if resp.content_length == 0:
        return b""
    chunks: list[bytes] = []
    size = 0
    async for chunk in resp.content.iter_chunked(16 * 1024):
        chunks.append(chunk)
        size += len(chunk)
        if size >= MAX_ERROR_BODY:
            resp.close()
            break
    return b"".join(chunks)[:MAX_ERROR_BODY]


def _ms(started: float) -> float:
    return (time.perf_counter() - started) * 1000.0


def _parse(status: int, body: bytes, retry_after: float | None, latency_ms: float) -> Answer:
    if status == 200:
        return Answer(200, latency_ms=latency_ms)
    data = _json_object(body)
    if status == 400:
        # The API's own refusal: {"timestamp", "code", "message"}. Without a code it is unreadable.
        code = data.get("code") if data else None
        if not isinstance(code, str) or not code:
            return Answer(400, failure="unreadable", latency_ms=latency_ms)
        return Answer(400, code, _message(data), retry_after, latency_ms=latency_ms)
    # Gateway answers carry {"statusCode", "message"}; 5xx may carry HTML or nothing.
    message = _message(data) if data else None
    return Answer(status, None, message, retry_after, latency_ms=latency_ms)


def _json_object(body: bytes) -> dict[str, object] | None:
    try:
        data = json.loads(body)
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def _message(data: dict[str, object] | None) -> str | None:
    value = data.get("message") if data else None
    if value is None:
        return None
    return str(value)[:MAX_MESSAGE]
