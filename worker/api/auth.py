"""Access tokens: OAuth2 client credentials (cached, refreshed ahead of expiry, one refresh for
everyone on a 401) or a static token given by the user."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Protocol

import aiohttp
import structlog

from worker.api.client import proxy_for, read_body, unreachable
from worker.api.limiter import RateLimiter
from worker.domain.errors import ApiConfigError, FatalApiError
from worker.domain.retry import Backoff
from worker.runtime.clock import Clock
from worker.runtime.redaction import redact
from worker.settings import safe_url

log = structlog.get_logger(__name__)

MIN_REFRESH_INTERVAL_S = 1.0  # never more than one token request a second
EXPIRY_MARGIN_S = 0.5  # a token this close to its end is not sent: it could expire on the way
MAX_TOKEN_BODY = 64 * 1024  # a token answer is a small JSON object


class TokenProvider(Protocol):
    """What the dispatcher needs from authentication. ``generation`` counts the tokens issued:
    a caller notes it with the token it sends, to tell a 401 to a token issued since its own
    refresh (fatal) from one to an older token (refresh)."""

    generation: int

    def ready(self) -> str | None:
        """The token when it can be sent now without asking the token endpoint, else None."""
        ...

    async def get(self) -> str:
        """A token believed valid now."""
        ...

    async def refresh(self, stale: str) -> str:
        """A token other than ``stale``: refreshed once for all callers that saw it fail."""
        ...


class StaticToken:
    """A ready bearer token: no refresh, so a 401 is final for the run."""

    def __init__(self, token: str) -> None:
        self._token = token
        self.generation = 0

    def ready(self) -> str:
        """The given token."""
        return self._token

    async def get(self) -> str:
        """The given token."""
        return self._token

    async def refresh(self, stale: str) -> str:  # noqa: ARG002 - the protocol's signature
        """Cannot refresh: the run must stop."""
        raise FatalApiError(
            "the API answered 401 to the given access token (MOUVONE_ACCESS_TOKEN): "
            "it is invalid or expired, or the API key is wrong"
        )


class ClientCredentials:
    """OAuth2 client-credentials grant against the token endpoint."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        token_url: str,
        client_id: str,
        client_secret: str,
        *,
        limiter: RateLimiter,
        clock: Clock,
        timeout_s: float,
        max_attempts: int,
        backoff: Backoff,
        on_token: Callable[[str], None] = lambda _token: None,
        proxy: str | None = None,
    ) -> None:
        self._session = session
        self._url = token_url
        self._proxy = proxy_for(token_url, proxy)
        self._form = {
            "grant_type": "client_credentials",
            "client_id": client_id,
            "client_secret": client_secret,
        }
        self._limiter = limiter
        self._clock = clock
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._max_attempts = max_attempts
        self._backoff = backoff
        self._on_token = on_token
        self._lock = asyncio.Lock()
        self._token: str | None = None
        self._refresh_at = 0.0  # refreshed ahead of its end from then on
        self._usable_until = 0.0  # never sent after this
        self._fetched_at: float | None = None
        self.refreshes = 0
        self.generation = 0

    def ready(self) -> str | None:
        """The cached token while ``get`` would hand it out at once, else None (``get`` then)."""
        token = self._token
        if token is None:
            return None
        now = self._clock.monotonic()
        if now < self._refresh_at or (now < self._usable_until and not self._may_fetch()):
            return token
        return None

    async def get(self) -> str:
        """The cached token, fetched when missing or due for refresh (ahead of the lifetime
        the token endpoint stated, whatever it is). A token is never handed out past its end:
        when a refresh is due but the last was less than a second ago, the caller waits."""
        token = self._token
        if token is not None and self._clock.monotonic() < self._refresh_at:
            return token
        async with self._lock:
            now = self._clock.monotonic()
            if self._token is not None and now < self._refresh_at:
                return self._token
            if self._token is not None and now < self._usable_until and not self._may_fetch():
                return self._token  # due, but refreshed less than a second ago: still valid
            await self._fetch()
            assert self._token is not None
            return self._token

    async def refresh(self, stale: str) -> str:
        """Refresh unless another caller already replaced ``stale``."""
        async with self._lock:
            if self._token is None or self._token == stale:
                await self._fetch()
            assert self._token is not None
            return self._token

    def _may_fetch(self) -> bool:
        fetched = self._fetched_at
        return fetched is None or self._clock.monotonic() - fetched >= MIN_REFRESH_INTERVAL_S

    async def _fetch(self) -> None:
        if self._fetched_at is not None:  # at most one token request a second
            wait = self._fetched_at + MIN_REFRESH_INTERVAL_S - self._clock.monotonic()
            if wait > 0:
                await self._clock.sleep(wait)
        for attempt in range(1, self._max_attempts + 1):
            problem = await self._try_fetch()
            if problem is None:
                return
            if attempt < self._max_attempts:
                delay = self._backoff.delay(attempt)
                log.warning(
                    "token_retry", attempt=attempt, problem=problem, delay_s=round(delay, 3)
                )
                await self._clock.sleep(delay)
        raise FatalApiError(f"no access token after {self._max_attempts} attempts: {problem}")

    async def _try_fetch(self) -> str | None:
        """One token request; None on success, else what went wrong (retryable)."""
        await self._limiter.acquire()
        try:
            # Never redirected: the form carries the client secret, which goes to the
            # configured URL or nowhere.
            async with self._session.post(
                self._url,
                data=self._form,
                timeout=self._timeout,
                allow_redirects=False,
                proxy=self._proxy,
            ) as r:
                body = await read_body(r, MAX_TOKEN_BODY + 1)  # to its end, however it arrives
                status = r.status
                location = r.headers.get("Location", "")
        except aiohttp.ClientConnectorError as exc:
            if self.refreshes == 0:  # never reached: a wrong host or port, not an outage
                via = f" through the proxy {safe_url(self._proxy)}" if self._proxy else ""
                raise ApiConfigError(
                    f"cannot reach the token endpoint {unreachable(exc)}{via} (MOUVONE_TOKEN_URL)"
                ) from None
            return f"token endpoint unreachable: {type(exc).__name__}"
        except (aiohttp.ClientError, TimeoutError) as exc:
            return f"token endpoint unreachable: {type(exc).__name__}"
        if 300 <= status < 400:
            raise ApiConfigError(
                f"the token endpoint {self._url} answered HTTP {status}, a redirect to "
                f"{location[:200] or '(no Location)'}: the client secret is never sent there; "
                "set MOUVONE_TOKEN_URL to the endpoint itself"
            )
        if status in (400, 401, 403):
            raise FatalApiError(
                f"the token endpoint refused the client credentials (HTTP {status}"
                f"{_oauth_error(body)}): check MOUVONE_CLIENT_ID and MOUVONE_CLIENT_SECRET"
            )
        if status != 200:
            return f"token endpoint answered HTTP {status}"
        if len(body) > MAX_TOKEN_BODY:
            return f"token endpoint answered an unreadable body (over {MAX_TOKEN_BODY // 1024} KiB)"
        try:
            data = json.loads(body)
            token = str(data["access_token"])
            expires_in = float(data.get("expires_in", 300))
        except (ValueError, KeyError, TypeError, RecursionError):
            return "token endpoint answered an unreadable body"
        if not 0 < expires_in < float("inf"):
            return f"token endpoint answered a lifetime of {expires_in} s"
        self._on_token(token)
        now = self._clock.monotonic()
        self._token = token
        self._fetched_at = now
        # Refreshed a fifth of its life (at most a minute) ahead of its end, and never sent in
        # the last half second of it.
        self._refresh_at = now + expires_in - min(60.0, expires_in / 5)
        self._usable_until = now + expires_in - min(EXPIRY_MARGIN_S, expires_in / 5)
        self.refreshes += 1
        self.generation += 1
        log.debug("token_refreshed", expires_in=expires_in)
        return None


def _oauth_error(body: bytes) -> str:
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        return ""
    if isinstance(data, dict):
        err = data.get("error") or data.get("message")
        if isinstance(err, str):
            return f": {redact.text(err)[:100]}"  # redacted before it is cut
    return ""
