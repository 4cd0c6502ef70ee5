"""One HTTP call to MouvONE: what came back. Never raises for an answer or a network fault."""

from __future__ import annotations

import asyncio
import json
import re
import ssl
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit
from urllib.request import getproxies_environment, proxy_bypass_environment  # type: ignore[attr-defined]

import aiohttp
from multidict import CIMultiDict
from yarl import URL

from worker.api.deadlines import Deadlines
from worker.api.headers import limit_per_s, request_ids, response_id, traceparent
from worker.domain.answer import Answer
from worker.domain.retry import parse_retry_after
from worker.runtime.redaction import redact

MAX_ERROR_BODY = 64 * 1024  # error bodies are small JSON; never read more than this
MAX_READ_BODY = 8 * 1024 * 1024  # a GET's JSON answer (a page of 50 orders with details)
MAX_MESSAGE = 500
MAX_CODE = 100


NO_TIMER = aiohttp.ClientTimeout(total=None)  # aiohttp's own timer per request: not used
_PLAIN_SEGMENT = re.compile(r"[A-Za-z0-9_~-]+")  # what quote() would leave as it is


class OrderUrls:
    """``{base}/customer-orders/{id}`` for any number of IDs, the base parsed once (parsing
    a whole URL per order costs more than the rest of building the request)."""

    def __init__(self, base_url: str) -> None:
        self._prefix = URL(f"{base_url}/customer-orders/", encoded=True)
        self._path = self._prefix.raw_path

    def __call__(self, order_id: str) -> URL:
        """The order's URL, its ID exactly one percent-encoded segment."""
        if _PLAIN_SEGMENT.fullmatch(order_id):
            segment = order_id
        elif not order_id:  # the collection's URL: never the target of a DELETE
            raise ValueError("an empty order ID has no URL")
        else:
            segment = quote(order_id, safe="").replace(".", "%2E")
        return self._prefix.with_path(self._path + segment, encoded=True)


def proxy_for(url: str, proxy: str | None) -> str | None:
    """The proxy a request to ``url`` goes through, as curl decides: ``proxy`` (--proxy) or
    else HTTPS_PROXY / HTTP_PROXY by the URL's scheme, unless NO_PROXY names its host."""
    parts = urlsplit(url)
    found = getproxies_environment()
    chosen = proxy or found.get(parts.scheme)
    if not chosen or proxy_bypass_environment(parts.hostname or "", found):
        return None
    return chosen


def order_url(base_url: str, order_id: str) -> URL:
    """``{base}/customer-orders/{id}`` with the ID as exactly one percent-encoded segment."""
    return OrderUrls(base_url)(order_id)


def new_session(concurrency: int, ca_bundle: Path | None = None) -> aiohttp.ClientSession:
    """The one session of a run: a connection limit, certificates verified (against
    ``ca_bundle`` too: a company CA), and no silent resend of a DELETE.

    aiohttp resends an idempotent request once when a kept-alive connection turns out to be
    closed (issue #10790). That resend would bypass the rate limiter and the attempt count, so it
    is switched off; the dispatcher retries through the limiter instead.
    """
    tls: ssl.SSLContext | bool = True
    if ca_bundle is not None:
        tls = ssl.create_default_context()
        tls.load_verify_locations(cafile=str(ca_bundle))
    connector = aiohttp.TCPConnector(limit=concurrency + 2, limit_per_host=concurrency + 2, ssl=tls)
    session = aiohttp.ClientSession(connector=connector, raise_for_status=False)
    session._retry_connection = False
    return session


class MouvoneClient:
    """Sends DELETE /customer-orders/{id} with both credentials."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        base_url: str,
        api_key: str,
        timeout_s: float,
        proxy: str | None = None,
    ) -> None:
        self._session = session
        self._proxy = proxy_for(base_url, proxy)
        self._base_url = base_url
        self._order_url = OrderUrls(base_url)
        self._api_key = api_key
        self._deadlines = Deadlines(timeout_s)
        self._token = ""
        self._headers: CIMultiDict[str] = CIMultiDict()

    def cancel(
        self, order_id: str, token: str, request_id: str | None = None
    ) -> Coroutine[Any, Any, Answer]:
        """One DELETE (its X-Request-ID ``request_id``, when the caller made it); the answer, or
        the transport failure, as an Answer. (A plain method returning the request's
        coroutine: one frame less to resume at every suspension.)"""
        return self._call("DELETE", self._order_url(order_id), token, request_id)

    async def fetch(self, url: URL, token: str) -> tuple[Answer, object]:
        """One GET; the answer, and the JSON body of a 200 (None when it is not JSON: the
        answer's failure is then ``unreadable``)."""
        answer = await self._call("GET", url, token)
        return answer, answer.body

    def list_url(self, params: dict[str, str]) -> URL:
        """``{base}/customer-orders?...``."""
        return URL(f"{self._base_url}/customer-orders").with_query(params)

    def order_url(self, order_id: str) -> URL:
        """``{base}/customer-orders/{id}``, the ID one segment."""
        return self._order_url(order_id)

    async def _call(
        self, method: str, url: URL, token: str, request_id: str | None = None
    ) -> Answer:
        """One request with its own X-Request-ID; the answer says which, and when it left.
        (One coroutine: every frame between the worker and aiohttp is resumed again at each
        suspension of the request.)"""
        base = self._headers if token == self._token else self._credentials(token)
        request_id = request_id or request_ids()
        headers = base.copy()  # a CIMultiDict: aiohttp takes it as it is (a dict is converted)
        headers.add("X-Request-ID", request_id)
        headers.add("traceparent", traceparent(request_id))
        sent_at = time.time()
        started = time.perf_counter()
        limit = MAX_ERROR_BODY if method == "DELETE" else MAX_READ_BODY
        task = self._deadlines.start()
        try:
            # A redirect is not followed: it would send the DELETE (and the credentials) to a
            # URL nobody chose; as an unexpected answer it is retried, then retryable_failed.
            async with self._session.request(
                method,
                url,
                headers=headers,
                timeout=NO_TIMER,  # the timeout is self._deadlines
                allow_redirects=False,
                proxy=self._proxy,
            ) as resp:
                status = resp.status
                answered_as = response_id(resp.headers)
                if status == 200 and method == "DELETE":  # the common case: the body is not used
                    length = resp.content_length
                    await (
                        resp.read()
                        if length is not None and length <= limit
                        else read_body(resp, limit)
                    )
                    return Answer(
                        200,
                        latency_ms=_ms(started),
                        request_id=request_id,
                        response_id=answered_as,
                        sent_at=sent_at,
                    )
                retry_after = parse_retry_after(resp.headers.get("Retry-After"))
                hint = limit_per_s(resp.headers) if status == 429 else None
                body = await read_body(resp, limit)
        except asyncio.CancelledError:
            if not self._deadlines.stop(task):
                raise
            assert task is not None
            if task.uncancel():  # cancelled for another reason too (the run stops)
                raise
            answer = _failure(TimeoutError(), _ms(started))
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            answer = _failure(exc, _ms(started))
        else:
            answer = _answered(method, status, body, retry_after, _ms(started))
            answer.response_id = answered_as
            answer.limit_per_s = hint
        finally:
            if self._deadlines.stop(task):  # timed out, but the cancellation was swallowed
                task.uncancel()  # type: ignore[union-attr]
        answer.request_id = request_id
        answer.sent_at = sent_at
        return answer

    def _credentials(self, token: str) -> CIMultiDict[str]:
        """The two credential headers for this token (kept until the token changes)."""
        self._token = token
        self._headers = CIMultiDict(
            {"Authorization": f"Bearer {token}", "Ocp-Apim-Subscription-Key": self._api_key}
        )
        return self._headers


def _failure(exc: BaseException, latency_ms: float) -> Answer:
    """What a request that got no readable answer produced."""
    if isinstance(exc, TimeoutError):
        return Answer(None, failure="timeout", latency_ms=latency_ms)
    if isinstance(exc, aiohttp.ClientPayloadError):
        return Answer(None, failure="unreadable", latency_ms=latency_ms)
    if isinstance(exc, aiohttp.ClientResponseError):  # malformed status line or headers
        return Answer(exc.status or None, failure="unreadable", latency_ms=latency_ms)
    answer = Answer(None, failure="connection", latency_ms=latency_ms)
    if isinstance(exc, aiohttp.ClientConnectorError):  # refused, no such host, a TLS failure
        answer.unreachable = unreachable(exc)
    return answer


def _answered(
    method: str, status: int, body: bytes, retry_after: float | None, latency_ms: float
) -> Answer:
    """An answer other than a DELETE's 200: a GET's JSON, or the refusal read."""
    if method == "GET" and status == 200:
        try:
            return Answer(200, latency_ms=latency_ms, body=json.loads(body))
        except (ValueError, RecursionError):  # a hostile nesting is unreadable too
            return Answer(200, failure="unreadable", latency_ms=latency_ms)
    return _parse(status, body, retry_after, latency_ms)


async def read_body(resp: aiohttp.ClientResponse, limit: int) -> bytes:
    """The body, up to ``limit`` bytes. Reading it (a 200's too) lets the connection be
    reused; a longer body is cut, and its connection closed rather than read to the end."""
    if resp.content_length == 0:
        return b""
    chunks: list[bytes] = []
    size = 0
    async for chunk in resp.content.iter_chunked(16 * 1024):
        chunks.append(chunk)
        size += len(chunk)
        if size >= limit:
            resp.close()
            break
    return b"".join(chunks)[:limit]


def unreachable(exc: aiohttp.ClientConnectorError) -> str:
    """Host, port and what went wrong, for a one-line error (a certificate names its fix)."""
    where = f"{exc.host}:{exc.port}"
    if isinstance(exc, aiohttp.ClientSSLError):
        reason = getattr(exc, "certificate_error", None) or exc.os_error
        return (
            f"{where}: TLS failed ({reason}): a company CA goes in MOUVONE_CA_BUNDLE (--ca-bundle)"
        )
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        return f"{where}: the name does not resolve ({exc.os_error})"
    return f"{where}: {exc.os_error.strerror or exc.os_error}"


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
        return Answer(400, _code(code), _message(data), retry_after, latency_ms=latency_ms)
    # Gateway answers carry {"statusCode", "message"}; 5xx may carry HTML or nothing. A 404 is
    # the API's word on one order only with the API's own error object (its code); the
    # gateway's "Resource not found" says the base URL misses the API.
    message = _message(data) if data else None
    code = data.get("code") if data and status == 404 else None
    return Answer(
        status,
        _code(code) if isinstance(code, str) and code else None,
        message,
        retry_after,
        latency_ms=latency_ms,
    )


def _json_object(body: bytes) -> dict[str, object] | None:
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):  # 5 KB of "[[[[..." nests deeper than Python allows
        return None
    return data if isinstance(data, dict) else None


def _code(code: str) -> str:
    """The API's error code as recorded: redacted of every known secret (an API that echoes
    the key in it must not put it in the ledger), and short."""
    return redact.text(code)[:MAX_CODE]


def _message(data: dict[str, object] | None) -> str | None:
    """The message as recorded: redacted first, then cut (cut first, half of a secret would
    be left that no longer matches it). The body is at most MAX_ERROR_BODY long."""
    value = data.get("message") if data else None
    if value is None:
        return None
    return redact.text(str(value))[:MAX_MESSAGE]
