"""A local MouvONE look-alike: token endpoint, DELETE and both GETs, gateway faults.

What each order does is chosen by the first three letters of its ID (see BEHAVIOURS), so a
batch can rehearse every outcome; the count of transient failures is the ID's last digit
(0 means every time). Random faults, latency and a gateway rate limit are settings.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import secrets
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
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
    "WFM": ("code", "WRONG_FORMAT"),
    "USR": ("code", "USER_ID_INVALID"),
    "ORG": ("code", "ORGANIZATION_NOT_FOUND"),
    "ACT": ("code", "ORGANIZATION_ACTOR_CODE_INVALID"),
    "GON": ("status", "404"),
    "FBD": ("status", "403"),
    "ERR": ("status", "500"),
    "CFL": ("transient", "conflict"),
    "TMP": ("transient", "503"),
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
STATUSES = ("Draft", "Valid", "Submitted", "InProcess", "Accepted")


@dataclass
class SimConfig:
    """How the simulator behaves."""

    client_id: str = "demo-client"
    client_secret: str = "demo-secret"  # noqa: S105 - a simulator's well-known demo value
    api_key: str = "demo-key"
    token_ttl_s: float = 3600.0
    token_failures: int = 0  # the first N token requests answer 503
    latency_ms: float = 0.0
    rate_limit: float | None = None  # gateway limit, requests per sliding second; 429 beyond
    retry_after_s: int = 1
    quota_retry_after_s: int = 2
    stall_s: float = 120.0
    error_rate: float = 0.0  # share of DELETEs answered 503 at random
    reset_rate: float = 0.0  # share of DELETEs whose connection is reset at random
    seed: int = 0
    orders: int = 0  # orders to pre-create for the list endpoint
    base_path: str = "/customer-orders/v1"
    token_path: str = "/soget-connect/v1/openid-connect/token"  # noqa: S105 - a path


@dataclass
class SimStats:
    """What the simulator saw, for tests and rehearsals."""

    deletes: Counter[str] = field(default_factory=Counter)
    statuses: Counter[int] = field(default_factory=Counter)
    arrivals: list[float] = field(default_factory=list)  # monotonic time of each API request
    token_requests: int = 0
    resent_final: int = 0  # DELETEs for an order that had already had a final answer
    answers: list[tuple[float, str, int]] = field(default_factory=list)  # (time, order, status)

    def max_in_window(self, window_s: float = 1.0) -> int:
        """The most API requests that arrived within any sliding window of this length."""
        times = sorted(self.arrivals)
        best, start = 0, 0
        for end, t in enumerate(times):
            while t - times[start] >= window_s:
                start += 1
            best = max(best, end - start + 1)
        return best

    def as_dict(self) -> dict[str, object]:
        """JSON-ready view."""
        times = self.arrivals
        span = (max(times) - min(times)) if len(times) > 1 else 0.0
        return {
            "deletes": sum(self.deletes.values()),
            "orders": len(self.deletes),
            "resent_final": self.resent_final,
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
            "max_per_second": self.max_in_window(1.0),
            "span_s": round(span, 3),
            "token_requests": self.token_requests,
            "per_order": dict(self.deletes),
        }


class Simulator:
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
        self._random = random.Random(self.config.seed)
        self._created: dict[str, date] = {}
        self._seed_orders()

    def app(self) -> web.Application:
        """The aiohttp application."""
        app = web.Application()
        c = self.config
        app.router.add_post(c.token_path, self.token)
        app.router.add_route("DELETE", c.base_path + "/customer-orders/{tail:.*}", self.delete)
        app.router.add_get(c.base_path + "/customer-orders/{tail:.*}", self.get_one)
        app.router.add_get(c.base_path + "/customer-orders", self.get_list)
        app.router.add_get("/_sim/stats", self.stats_handler)
        app.router.add_post("/_sim/reset", self.reset_handler)
        return app

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

    def expire_tokens(self) -> None:
        """Make every issued token invalid (a token expiring mid-run)."""
        self._tokens.clear()

    # -- gateway ----------------------------------------------------------------------------

    async def _gateway(self, request: web.Request) -> web.Response | None:
        """Latency, rate limit and credentials, as Azure API Management would apply them."""
        now = time.monotonic()
        self.stats.arrivals.append(now)
        if self.config.latency_ms:
            await asyncio.sleep(self.config.latency_ms / 1000)
        if request.headers.get("Ocp-Apim-Subscription-Key") != self.config.api_key:
            return _apim(401, "Access denied due to missing or invalid subscription key.")
        auth = request.headers.get("Authorization", "")
        expires = self._tokens.get(auth.removeprefix("Bearer "))
        if not auth.startswith("Bearer ") or expires is None or expires < time.monotonic():
            return _apim(401, "Unauthorized. Access token is missing or invalid.")
        limit = self.config.rate_limit
        if limit is not None:
            while self._window and now - self._window[0] >= 1.0:
                self._window.popleft()
            if len(self._window) >= limit:
                return _apim(429, "Rate limit is exceeded.", self.config.retry_after_s)
            self._window.append(now)
        return None

    # -- DELETE -----------------------------------------------------------------------------

    async def delete(self, request: web.Request) -> web.StreamResponse:
        """Cancel one order."""
        order_id = _order_id(request, self.config.base_path)
        refused = await self._gateway(request)
        if refused is not None:
            self.stats.answers.append((time.monotonic(), order_id or "", refused.status))
            return self._count(refused)
        if order_id is None:
            return self._count(_api_error("WRONG_FORMAT", "Order identifier is in wrong format."))
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
        kind, detail = BEHAVIOURS.get(order_id[:3], ("normal", ""))
        if kind == "code":
            return _api_error(detail)
        if kind == "status":
            if detail == "404":
                return _apim(404, "Resource not found")
            if detail == "403":
                return _apim(403, "Forbidden")
            return web.Response(status=int(detail), text="")
        if kind == "transient" and self._fails_now(order_id):
            return await self._fault(request, detail)
        if order_id in self.cancelled:
            return _api_error("ORDER_ALREADY_CANCELED", "The order has already been cancelled.")
        self.cancelled.add(order_id)
        return web.Response(status=200)

    async def wait_for_deletes(self, count: int) -> None:
        """Return once at least ``count`` DELETEs have arrived (for tests and rehearsals)."""
        if sum(self.stats.deletes.values()) >= count:
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((count, future))
        await future

    def _notify(self) -> None:
        if not self._waiters:
            return
        seen = sum(self.stats.deletes.values())
        for count, future in list(self._waiters):
            if seen >= count:
                self._waiters.remove((count, future))
                if not future.done():
                    future.set_result(None)

    def _fails_now(self, order_id: str) -> bool:
        times = int(order_id[-1]) if order_id[-1].isdigit() else 1
        self._failures[order_id] += 1
        return times == 0 or self._failures[order_id] <= times

    async def _fault(self, request: web.Request, detail: str) -> web.StreamResponse:
        if detail == "conflict":
            return _api_error("CONFLICT", "The order was updated by another user.")
        if detail == "503":
            return web.Response(status=503, text="")
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
            return _apim(403, "Out of call volume quota.", self.config.quota_retry_after_s)
        return _apim(429, "Rate limit is exceeded.", self.config.retry_after_s)

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
        _kind, detail = BEHAVIOURS.get(order_id[:3], ("normal", ""))
        if detail in {"CUSTOMER_ORDER_NOT_FOUND", "404"}:
            return None
        digest = hashlib.sha256(order_id.encode()).digest()
        status = STATUSES[digest[0] % 2]  # Draft or Valid: cancellable
        if detail == "R0008":
            status = "Submitted"
        if order_id in self.cancelled or detail == "ORDER_ALREADY_CANCELED":
            status = "Cancelled"
        created = self._created.get(order_id) or (
            datetime.now(UTC).date() - timedelta(days=digest[1] % 90)
        )
        return {
            "customerOrderId": order_id,
            "type": "Elementary" if detail == "CANNOT_CANCEL_NOT_MASTER_ORDER" else "Master",
            "status": status,
            "creationDate": created.isoformat(),
        }

    async def get_one(self, request: web.Request) -> web.StreamResponse:
        """GET /customer-orders/{id}."""
        refused = await self._gateway(request)
        if refused is not None:
            return self._count(refused)
        order_id = _order_id(request, self.config.base_path)
        found = self.order(order_id) if order_id else None
        if found is None:
            return self._count(_api_error("CUSTOMER_ORDER_NOT_FOUND", "Order doesn't exist."))
        return self._count(web.json_response(found))

    async def get_list(self, request: web.Request) -> web.StreamResponse:
        """GET /customer-orders with status, date, offset and limit filters."""
        refused = await self._gateway(request)
        if refused is not None:
            return self._count(refused)
        q = request.query
        try:
            limit = int(q.get("limit", "10"))
            offset = int(q.get("offset", "0"))
        except ValueError:
            return self._count(_api_error("SEARCH_DATE_ERROR", "Invalid parameter."))
        if limit <= 0:
            return self._count(_api_error("LIMIT_NONPOSITIVE", "LIMIT must be positive."))
        if offset < 0:
            return self._count(_api_error("OFFSET_NEGATIVE", "OFFSET cannot be negative."))
        try:
            start = date.fromisoformat(q["startDate"][:10]) if q.get("startDate") else None
            end = date.fromisoformat(q["endDate"][:10]) if q.get("endDate") else None
        except ValueError:
            return self._count(_api_error("SEARCH_DATE_ERROR", "Date parameters are invalid."))
        items = [o for o in (self.order(i) for i in sorted(self._created)) if o is not None]
        if q.get("status"):
            items = [o for o in items if o["status"] == q["status"]]
        if start:
            items = [o for o in items if str(o["creationDate"]) >= start.isoformat()]
        if end:
            items = [o for o in items if str(o["creationDate"]) <= end.isoformat()]
        page = items[offset : offset + min(limit, 50)]
        return self._count(
            web.json_response(
                {"total": len(items), "returned": len(page), "first": offset, "items": page}
            )
        )

    def _seed_orders(self) -> None:
        today = datetime.now(UTC).date()
        for n in range(1, self.config.orders + 1):
            order_id = f"SIM{n:010d}"
            self._created[order_id] = today - timedelta(days=self._random.randrange(0, 120))

    async def stats_handler(self, _request: web.Request) -> web.Response:
        """GET /_sim/stats: what the simulator saw."""
        return web.json_response(self.stats.as_dict())

    async def reset_handler(self, _request: web.Request) -> web.Response:
        """POST /_sim/reset: forget the counts (orders keep their state)."""
        self.stats = SimStats()
        return web.json_response({"reset": True})


def _order_id(request: web.Request, base_path: str) -> str | None:
    """The one path segment after /customer-orders/, decoded; None if there is not exactly one."""
    raw = request.raw_path.split("?", 1)[0]
    prefix = base_path + "/customer-orders/"
    if not raw.startswith(prefix):
        return None
    segment = raw[len(prefix) :]
    if not segment or "/" in segment:
        return None
    return unquote(segment)


def _api_error(code: str, message: str | None = None) -> web.Response:
    body = {"timestamp": datetime.now(UTC).isoformat(), "code": code, "message": message}
    return web.json_response(body, status=400)


def _apim(status: int, message: str, retry_after: int | None = None) -> web.Response:
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
    return web.Response(
        status=status,
        text=json.dumps({"statusCode": status, "message": message}),
        content_type=JSON,
        headers=headers,
    )


@dataclass
class RunningSimulator:
    """A simulator listening on a loopback port."""

    sim: Simulator
    runner: web.AppRunner
    host: str
    port: int

    @property
    def root(self) -> str:
        """http://host:port."""
        return f"http://{self.host}:{self.port}"

    @property
    def base_url(self) -> str:
        """The MOUVONE_BASE_URL to point the tool at."""
        return self.root + self.sim.config.base_path

    @property
    def token_url(self) -> str:
        """The MOUVONE_TOKEN_URL to point the tool at."""
        return self.root + self.sim.config.token_path

    async def close(self) -> None:
        """Stop listening."""
        await self.runner.cleanup()


async def start(
    config: SimConfig | None = None, host: str = "127.0.0.1", port: int = 0
) -> RunningSimulator:
    """Start a simulator (port 0 picks a free one)."""
    sim = Simulator(config)
    runner = web.AppRunner(sim.app(), access_log=None, handle_signals=False, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    server = site._server
    assert server is not None
    sockets = getattr(server, "sockets", None) or []
    bound = sockets[0].getsockname()[1] if sockets else port
    return RunningSimulator(sim, runner, host, bound)
