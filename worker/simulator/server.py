"""The simulator's server: the handlers, and starting it on a loopback port."""

from __future__ import annotations

import asyncio
import random
import secrets
import time
from collections import Counter, deque

from aiohttp import web
from aiohttp.typedefs import Handler

from worker.simulator.config import SimConfig
from worker.simulator.controls import SimControls
from worker.simulator.model import (
    BEHAVIOURS,
    JSON,
    NOT_FINAL,
    SimStats,
    api_error,
    apim,
    order_id_of,
)
from worker.simulator.orders import OrderBook


class Simulator(SimControls):
    """The state and handlers of one simulated MouvONE."""

    def __init__(self, config: SimConfig | None = None) -> None:
        self.config = config or SimConfig()
        self.stats = SimStats()
        self.cancelled: set[str] = set()
        self.finalized: set[str] = set()  # orders that have had a final answer
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._failures: Counter[str] = Counter()
        self._tokens: dict[str, float] = {}
        self._window: deque[float] = deque()
        self._outage_until = 0.0
        self._outage_kind = "503"
        self._random = random.Random(self.config.seed)
        self._open = asyncio.Event()
        self._open.set()
        self.holding = 0  # DELETEs kept waiting by hold()
        self._held = asyncio.Event()
        self.book = OrderBook(self.config.orders, self._random)

    def app(self) -> web.Application:
        """The aiohttp application."""
        app = web.Application(middlewares=[self._journal])
        c = self.config
        app.router.add_post(c.token_path, self.token)
        app.router.add_route("DELETE", c.base_path + "/customer-orders/{tail:.*}", self.delete)
        app.router.add_get(c.base_path + "/customer-orders/{tail:.*}", self.get_one)
        app.router.add_get(c.base_path + "/customer-orders", self.get_list)
        app.router.add_get("/_sim/stats", self.stats_handler)
        app.router.add_post("/_sim/reset", self.reset_handler)
        app.router.add_post("/_sim/outage", self.outage_handler)
        app.router.add_route("*", "/{tail:.*}", self.unknown_path)
        return app

    @web.middleware
    async def _journal(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Every request to the API in the journal (method, order, its X-Request-ID, the
        simulator's own id), that id answered in x-ms-request-id as Azure API Management does."""
        if "/customer-orders" not in request.path:
            return await handler(request)
        own = f"sim-{len(self.stats.journal) + 1}"
        order_id = order_id_of(request, self.config.base_path) or ""
        request_id = request.headers.get("X-Request-ID", "")
        self.stats.journal.append((request.method, order_id, request_id, own))
        self.stats.traceparents[request_id] = request.headers.get("traceparent", "")
        response = await handler(request)
        response.headers["x-ms-request-id"] = own
        return response

    async def unknown_path(self, _request: web.Request) -> web.Response:
        """Any other path, as Azure API Management answers it (a wrong base URL)."""
        return apim(404, "Resource not found")

    # -- token ----------------------------------------------------------------------------

    async def token(self, request: web.Request) -> web.Response:
        """OAuth2 client credentials."""
        self.stats.token_requests += 1
        form = await request.post()
        if self.stats.token_requests <= self.config.token_failures:
            return web.Response(status=503, text="<html>Service Unavailable</html>")
        if (
            form.get("grant_type") != "client_credentials"
            or form.get("client_id") != self.config.client_id
            or form.get("client_secret") != self.config.client_secret
        ):
            return web.json_response({"error": "invalid_client"}, status=401)
        token = secrets.token_urlsafe(24)
        self._tokens[token] = time.monotonic() + self.config.token_ttl_s
        return web.json_response(
            {"access_token": token, "expires_in": self.config.token_ttl_s, "token_type": "Bearer"}
        )

    # -- gateway ----------------------------------------------------------------------------

    async def _gateway(self, request: web.Request) -> web.StreamResponse | None:
        """Outages, latency, rate limit and credentials, as Azure API Management applies them."""
        now = time.monotonic()
        self.stats.arrivals.append(now)
        if now < self._outage_until:
            self.stats.outage_answers += 1
            if self._outage_kind == "stall":
                await asyncio.sleep(self.config.stall_s)
                return web.Response(status=504, text="")
            return await self._fault(request, self._outage_kind)
        if self.config.latency_ms:
            await asyncio.sleep(self.config.latency_ms / 1000)
        if request.headers.get("Ocp-Apim-Subscription-Key") != self.config.api_key:
            return apim(401, "Access denied due to missing or invalid subscription key.")
        auth = request.headers.get("Authorization", "")
        expires = self._tokens.get(auth.removeprefix("Bearer "))
        if not auth.startswith("Bearer ") or expires is None or expires < time.monotonic():
            return apim(401, "Unauthorized. Access token is missing or invalid.")
        limit = self.config.rate_limit
        if limit is not None:
            while self._window and now - self._window[0] >= 1.0:
                self._window.popleft()
            if len(self._window) >= limit:
                return apim(429, "Rate limit is exceeded.", self.config.retry_after_s)
            self._window.append(now)
        return None

    # -- DELETE -----------------------------------------------------------------------------

    async def delete(self, request: web.Request) -> web.StreamResponse:
        """Cancel one order."""
        stats = self.stats
        stats.in_flight += 1
        stats.max_in_flight = max(stats.max_in_flight, stats.in_flight)
        try:
            if not self._open.is_set():
                self.holding += 1
                self._held.set()
                await self._open.wait()
                self.holding -= 1
            return await self._delete(request)
        finally:
            stats.in_flight -= 1

    async def _delete(self, request: web.Request) -> web.StreamResponse:
        order_id = order_id_of(request, self.config.base_path)
        refused = await self._gateway(request)
        if refused is not None:
            self.stats.answers.append((time.monotonic(), order_id or "", refused.status))
            return self._count(refused)
        if order_id is None:
            return self._count(api_error("WRONG_FORMAT", "Order identifier is in wrong format."))
        self.stats.deletes[order_id] += 1
        self._notify()
        if order_id in self.finalized:
            self.stats.resent_final += 1
        if self._random.random() < self.config.reset_rate:
            return await self._reset(request)
        if self._random.random() < self.config.error_rate:
            return self._count(web.Response(status=503, text=""))
        response = await self._behave(request, order_id)
        self.stats.answers.append((time.monotonic(), order_id, response.status))
        if response.status in (200, 404) or (
            response.status == 400 and BEHAVIOURS.get(order_id[:3], ("", ""))[1] not in NOT_FINAL
        ):
            self.finalized.add(order_id)
        return self._count(response)

    async def _behave(self, request: web.Request, order_id: str) -> web.StreamResponse:
        if order_id in self.book.orders:
            code = self.book.cancel(order_id)
            return api_error(code) if code else web.Response(status=200)
        kind, detail = BEHAVIOURS.get(order_id[:3], ("normal", ""))
        if kind in ("code", "code404", "deep", "formula"):
            return _refusal(kind, detail)
        if kind == "echo":
            key = request.headers.get("Ocp-Apim-Subscription-Key")
            return api_error(detail, f"key {key}, {request.headers.get('Authorization')}")
        if kind == "status":
            if detail == "404":
                return apim(404, "Resource not found")
            if detail == "403":
                return apim(403, "Forbidden")
            return web.Response(status=int(detail), text="")
        if kind == "transient" and self._fails_now(order_id):
            return await self._fault(request, detail)
        if order_id in self.cancelled:
            return api_error("ORDER_ALREADY_CANCELED", "The order has already been cancelled.")
        self.cancelled.add(order_id)
        return web.Response(status=200)

    def _fails_now(self, order_id: str) -> bool:
        times = int(order_id[-1]) if order_id[-1].isdigit() else 1
        self._failures[order_id] += 1
        return times == 0 or self._failures[order_id] <= times

    async def _fault(self, request: web.Request, detail: str) -> web.StreamResponse:
        if detail == "conflict":
            return api_error("CONFLICT", "The order was updated by another user.")
        if detail == "503":
            return web.Response(status=503, text="")
        if detail == "503hour":
            return web.Response(status=503, text="", headers={"Retry-After": "3600"})
        if detail == "502html":
            return web.Response(
                status=502, text="<html><body>Bad Gateway</body></html>", content_type="text/html"
            )
        if detail == "500json":
            return web.Response(status=500, text='{"code": "INTERN', content_type=JSON)
        if detail == "reset":
            return await self._reset(request)
        if detail == "stall":
            await asyncio.sleep(self.config.stall_s)
            return web.Response(status=200)
        if detail == "quota":
            return apim(403, "Out of call volume quota.", self.config.quota_retry_after_s)
        return apim(429, "Rate limit is exceeded.", self.config.retry_after_s)

    async def _reset(self, request: web.Request) -> web.StreamResponse:
        transport = request.transport
        if transport is not None:
            transport.abort()
        raise asyncio.CancelledError

    def _count(self, response: web.StreamResponse) -> web.StreamResponse:
        self.stats.statuses[response.status] += 1
        return response

    # -- GET ----------------------------------------------------------------------------------

    def order(self, order_id: str) -> dict[str, object] | None:
        """The order as GET /customer-orders/{id} shows it; None when it does not exist."""
        return self.book.view(order_id, order_id in self.cancelled)

    async def get_one(self, request: web.Request) -> web.StreamResponse:
        """GET /customer-orders/{id}."""
        refused = await self._gateway(request)
        if refused is not None:
            return self._count(refused)
        order_id = order_id_of(request, self.config.base_path)
        if order_id:
            self.stats.gets[order_id] += 1
        found = self.order(order_id) if order_id else None
        if found is None:
            return self._count(api_error("CUSTOMER_ORDER_NOT_FOUND", "Order doesn't exist."))
        return self._count(web.json_response(found))

    async def get_list(self, request: web.Request) -> web.StreamResponse:
        """GET /customer-orders with status, date, offset and limit filters."""
        refused = await self._gateway(request)
        if refused is not None:
            return self._count(refused)
        found = self.book.search(request.query)
        if isinstance(found, str):
            return self._count(api_error(found, "Invalid search parameter."))
        return self._count(web.json_response(found))


def _refusal(kind: str, detail: str) -> web.Response:
    """A refusal that is always the same for the order: the API's code (with a 400 or a 404),
    or a body no parser can take (nested 5,000 arrays deep)."""
    if kind == "deep":
        return web.Response(status=400, text="[" * 5000, content_type=JSON)
    if kind == "code404":
        return api_error(detail, "Order doesn't exist.", status=404)
    if kind == "formula":
        return api_error(detail, '=HYPERLINK("http://evil.example","click")')
    return api_error(detail)
