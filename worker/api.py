"""What every command that talks to the API shares: one session, one rate limiter, one token
provider and the client; and reads (GET) with the same retry rules as the cancellations."""

from __future__ import annotations

from dataclasses import dataclass

import aiohttp
import structlog
from yarl import URL

from worker.auth import ClientCredentials, StaticToken, TokenProvider
from worker.classifier import Action, OutcomeTable
from worker.client import Answer, MouvoneClient, new_session
from worker.clock import Clock
from worker.config import Settings
from worker.errors import FatalApiError
from worker.limiter import RateLimiter
from worker.logs import redact
from worker.metrics import Metrics
from worker.retry import Backoff

log = structlog.get_logger(__name__)


@dataclass
class Api:
    """The connection to MouvONE of one command."""

    session: aiohttp.ClientSession
    limiter: RateLimiter
    tokens: TokenProvider
    client: MouvoneClient
    backoff: Backoff

    async def close(self) -> None:
        """Close the session."""
        await self.session.close()


def connect(
    settings: Settings,
    clock: Clock,
    limiter: RateLimiter | None = None,
    metrics: Metrics | None = None,
) -> Api:
    """Session, limiter, tokens and client for these settings (call inside the event loop);
    ``limiter`` replaces the process's own (queue mode shares one through Redis)."""
    s = settings
    session = new_session(s.concurrency)
    limiter = limiter or RateLimiter(s.rate, clock)
    counted = metrics or Metrics()
    limiter.on_wait = lambda seconds: counted.waited("rate_limit", seconds)

    def on_token(token: str) -> None:
        redact.add(token)
        counted.token_refreshes += 1

    backoff = Backoff(s.backoff_base, s.backoff_cap)
    tokens: TokenProvider
    if s.access_token is not None:
        tokens = StaticToken(s.access_token.get_secret_value())
    else:
        assert s.client_id is not None
        assert s.client_secret is not None
        tokens = ClientCredentials(
            session,
            s.token_url,
            s.client_id,
            s.client_secret.get_secret_value(),
            limiter=limiter,
            clock=clock,
            timeout_s=s.timeout,
            max_attempts=s.max_attempts,
            backoff=backoff,
            on_token=on_token,
        )
    assert s.api_key is not None
    client = MouvoneClient(session, s.base_url, s.api_key.get_secret_value(), s.timeout)
    return Api(session, limiter, tokens, client, backoff)


class RetriesExhaustedError(Exception):
    """A read failed on every allowed attempt."""

    def __init__(self, url: URL, answer: Answer) -> None:
        what = answer.failure or f"HTTP {answer.status}"
        super().__init__(f"GET {url.path} failed on every attempt ({what})")
        self.answer = answer


class Reader:
    """GETs through the limiter with the cancellations' rules: a 401 refreshes the token once,
    429 and quota answers pause everyone, 5xx and transport failures back off and retry, fatal
    answers raise FatalApiError."""

    def __init__(
        self, api: Api, table: OutcomeTable, clock: Clock, *, max_attempts: int, max_wait_s: float
    ) -> None:
        self._api = api
        self._table = table
        self._clock = clock
        self._max_attempts = max_attempts
        self._max_wait_s = max_wait_s
        self.requests = 0

    async def get(self, url: URL) -> tuple[Answer, object]:
        """A 200 with its JSON body, or a 400/404 answer (body None) for the caller to read."""
        failures = 0
        reauthed = False
        while True:
            token = await self._api.tokens.get()
            await self._api.limiter.acquire()
            self.requests += 1
            answer, body = await self._api.client.fetch(url, token)
            if answer.failure is None and answer.status in (200, 404):
                self._api.limiter.speed_up()
                return answer, body
            verdict = self._table.classify(answer.status, answer.code, answer.failure)
            if answer.status == 400 and answer.failure is None and verdict.action is Action.FINAL:
                return answer, None
            if verdict.action is Action.REAUTH and not reauthed:
                reauthed = True
                await self._api.tokens.refresh(token)
                continue
            self._raise_if_fatal(url, answer, verdict.action)
            if verdict.action is Action.THROTTLE:
                self._api.limiter.slow_down()
            failures += 1
            if failures >= self._max_attempts:
                raise RetriesExhaustedError(url, answer)
            delay = self._api.backoff.delay(failures, answer.retry_after_s)
            if verdict.action in (Action.THROTTLE, Action.QUOTA):
                self._api.limiter.pause(answer.retry_after_s or 1.0)
            log.debug("read_retry", path=url.path, status=answer.status, delay_s=round(delay, 3))
            await self._clock.sleep(delay)

    def _raise_if_fatal(self, url: URL, answer: Answer, action: Action) -> None:
        retry_after = answer.retry_after_s
        if action is Action.REAUTH:
            raise FatalApiError(
                f"the API answered 401 after a token refresh (GET {url.path}): the access token "
                "or the API key (MOUVONE_API_KEY) is not accepted"
            )
        if action is Action.QUOTA and (retry_after is None or retry_after > self._max_wait_s):
            raise FatalApiError(
                f"the API answered 403 (GET {url.path}): "
                + ("access denied" if retry_after is None else "quota, longer than max_wait")
            )
        if action is Action.FATAL:
            raise FatalApiError(f"fatal API answer {answer.code} (GET {url.path})")
