"""What every command that talks to the API shares: one session, one rate limiter, one token
provider and the client; and reads (GET), decided as the cancellations are."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

import aiohttp
import structlog
from yarl import URL

from worker.api.auth import ClientCredentials, StaticToken, TokenProvider
from worker.api.client import MouvoneClient, new_session
from worker.api.limiter import RateLimiter
from worker.domain.answer import Answer
from worker.domain.classifier import Action, OutcomeTable
from worker.domain.decision import Decision, Situation, Step, decide
from worker.domain.errors import FatalApiError
from worker.domain.models import Outcome
from worker.domain.retry import Backoff
from worker.runtime.clock import Clock
from worker.runtime.metrics import Metrics
from worker.runtime.redaction import redact
from worker.settings import Settings

log = structlog.get_logger(__name__)


@dataclass
class ApiConnection:
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
) -> ApiConnection:
    """Session, limiter, tokens and client for these settings (call inside the event loop);
    ``limiter`` replaces the process's own (queue mode shares one through Redis)."""
    s = settings
    s.require_target()
    session = new_session(s.concurrency, s.ca_bundle)
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
        assert s.token_url is not None
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
            proxy=s.proxy,
        )
    assert s.api_key is not None
    client = MouvoneClient(
        session, s.api_url, s.api_key.get_secret_value(), s.timeout, proxy=s.proxy
    )
    return ApiConnection(session, limiter, tokens, client, backoff)


async def slot_and_token(
    limiter: RateLimiter,
    tokens: TokenProvider,
    stopping: Callable[[], bool],
    still_mine: Callable[[], Awaitable[bool]] | None = None,
) -> tuple[float, str] | None:
    """Wait for the limiter's next slot and a token to send in it: (the slot, the token); None
    when the run stops meanwhile, or ``still_mine`` says the order is another's. The token is
    taken after the wait, right before sending, so that a long wait never sends a token that
    expired meanwhile; a refresh's wait, or a slot reached late (a frozen process), makes the
    slot stale, and another is taken."""
    while True:
        due = await limiter.acquire()
        if stopping() or (still_mine is not None and not await still_mine()):
            return None
        token = tokens.ready()
        if token is None:
            await tokens.get()
        elif not limiter.late(due):
            return due, token


def obey(limiter: RateLimiter, decision: Decision, slot: float, hint_per_s: float | None) -> None:
    """What a decision asks of the limiter: a slower pace (``hint_per_s``: the gateway's own
    limit, when it said it), a pause for everyone."""
    if decision.slow_down:
        limiter.slow_down(slot, hint_per_s)
    if decision.pause_s is not None:
        limiter.pause(decision.pause_s)


class RetriesExhaustedError(FatalApiError):
    """A read failed on every allowed attempt (where nothing else can be done: exit 3)."""

    def __init__(self, url: URL, answer: Answer) -> None:
        what = answer.failure or f"HTTP {answer.status}"
        super().__init__(f"GET {url.path} failed on every attempt ({what})")
        self.answer = answer


class StoppingError(Exception):
    """The run is stopping: the read was not sent."""


class ApiAccess(Protocol):
    """What a reader sends through: the client, the tokens, the limiter, the backoff."""

    client: MouvoneClient
    tokens: TokenProvider
    limiter: RateLimiter
    backoff: Backoff


@dataclass
class AccessParts:
    """A ApiAccess made of the parts a caller holds (the dispatcher's own)."""

    client: MouvoneClient
    tokens: TokenProvider
    limiter: RateLimiter
    backoff: Backoff


class Reader:
    """GETs through the limiter, each answer decided as the cancellations' are
    (``worker.decision``): a 401 refreshes the token (fatal when the refreshed one is refused
    too), 429 and quota answers pause everyone within max_wait, 5xx and transport failures back
    off and retry, fatal answers raise FatalApiError."""

    def __init__(
        self,
        api: ApiAccess,
        table: OutcomeTable,
        clock: Clock,
        *,
        max_attempts: int,
        max_wait_s: float,
        stopping: Callable[[], bool] | None = None,
        metrics: Metrics | None = None,
        on_request: Callable[[], None] | None = None,
    ) -> None:
        self._api = api
        self._on_request = on_request
        self.table = table
        self._clock = clock
        self._max_attempts = max_attempts
        self._max_wait_s = max_wait_s
        self._stopping = stopping
        self._metrics = metrics
        self.requests = 0

    @classmethod
    def for_settings(cls, api: ApiAccess, settings: Settings, clock: Clock) -> Reader:
        """A reader with the settings' outcome table and retry limits (`check`, `select`)."""
        return cls(
            api,
            OutcomeTable.load(settings.outcome_table),
            clock,
            max_attempts=settings.max_attempts,
            max_wait_s=settings.max_wait,
        )

    async def get(
        self, url: URL, noted: Callable[[Answer], None] | None = None
    ) -> tuple[Answer, object]:
        """A 200 with its JSON body, or the API's final refusal (a 400 or a 404 with its error
        object; body None) for the caller to read; ``noted`` is told of every answer (the
        attempt log)."""
        failures = 0
        refresh_generation: int | None = None
        quota_since: float | None = None
        api = self._api
        what = f"GET {url.path}"
        while True:
            token, generation, answer, body, slot = await self._send(url, what)
            if noted is not None:
                noted(answer)
            verdict = self.table.classify(answer.status, answer.code, answer.failure)
            now = self._clock.monotonic()
            if verdict.action is Action.QUOTA and quota_since is None:
                quota_since = now
            situation = Situation(
                failures=failures,
                max_attempts=self._max_attempts,
                max_wait_s=self._max_wait_s,
                refused_after_refresh=(
                    refresh_generation is not None and generation >= refresh_generation
                ),
                quota_streak_s=0.0 if quota_since is None else now - quota_since,
            )
            decision = decide(verdict, answer, situation, api.backoff, what)
            failures += decision.counted
            obey(api.limiter, decision, slot, answer.limit_per_s)
            if decision.step is Step.RECORD:
                if decision.outcome is Outcome.RETRYABLE_FAILED:
                    raise RetriesExhaustedError(url, answer)
                api.limiter.speed_up()
                return answer, body if answer.status == 200 else None
            if decision.step is Step.STOP:
                raise FatalApiError(decision.reason)
            if decision.step is Step.REAUTH:
                await api.tokens.refresh(token)
                refresh_generation = api.tokens.generation
                continue
            log.debug("read_retry", path=url.path, status=answer.status, delay_s=decision.delay_s)
            await self._clock.sleep(decision.delay_s)

    async def once(self, url: URL) -> Answer:
        """One GET when the limiter admits it, its answer as it came (no retry, no decision):
        a health probe's. StoppingError when the run stops first."""
        return (await self._send(url, f"GET {url.path}"))[2]

    async def _send(self, url: URL, what: str) -> tuple[str, int, Answer, object, float]:
        """One GET when the limiter admits it: (token, its generation, answer, body, the
        limiter slot it went in)."""
        api = self._api
        taken = await slot_and_token(api.limiter, api.tokens, self._stopping or _never)
        if taken is None:
            raise StoppingError(what)
        due, token = taken
        generation = api.tokens.generation
        self.requests += 1
        if self._on_request is not None:
            self._on_request()
        answer, body = await api.client.fetch(url, token)
        if answer.status != 429:  # the limiter learns a gateway's limit from every request
            api.limiter.admitted.append(due)
        if self._metrics is not None:
            self._metrics.answered(answer)
        return token, generation, answer, body, due


def _never() -> bool:
    return False
