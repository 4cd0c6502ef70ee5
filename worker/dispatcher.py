"""One order's life: token -> rate limiter -> client -> classifier -> retry policy."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace

import structlog

from worker.auth import TokenProvider
from worker.breaker import CircuitBreaker, is_outage
from worker.classifier import Action, OutcomeTable, error_code_for
from worker.client import Answer, MouvoneClient
from worker.clock import Clock
from worker.control import RunControl
from worker.errors import FatalApiError
from worker.limiter import RateLimiter
from worker.logs import redact
from worker.metrics import Metrics
from worker.models import Outcome, Result
from worker.retry import Backoff

log = structlog.get_logger(__name__)


DEFAULT_THROTTLE_PAUSE_S = 1.0  # a 429 without Retry-After still slows everyone down


@dataclass(slots=True)
class OrderState:
    """What is known of one order while it is being worked on."""

    order_id: str
    attempts: int = 0  # requests sent
    failures: int = 0  # retryable failures, counted against max_attempts
    reauthed: bool = False
    in_flight: bool = False  # a request for it is on the wire
    probing: bool = False  # it holds the probe lock (credentials not yet proven)
    breaker_probe: bool = False  # its request is the circuit breaker's probe
    lost: bool = False  # queue mode: another consumer took the entry before it was sent
    entry_id: str = ""  # queue mode: the stream entry it came from
    verify: bool = False  # an earlier request may have reached the API: GET before sending
    last: Answer | None = field(default=None)

    def pending(self) -> Result:
        """Left unanswered because the run stopped."""
        return self.result(Outcome.PENDING)

    def result(self, outcome: Outcome, message: str | None = None) -> Result:
        """A Result from the last answer (if any) with this outcome."""
        last = self.last
        if last is None:
            return Result(self.order_id, outcome, None, None, message, self.attempts)
        return Result(
            self.order_id,
            outcome,
            last.status,
            error_code_for(last.status, last.code, last.failure),
            redact.clean(text) if (text := message or last.message) else None,
            self.attempts,
            round(last.latency_ms, 1),
        )


@dataclass(frozen=True)
class RetryPolicy:
    """How hard to try one order."""

    max_attempts: int
    max_wait_s: float
    backoff: Backoff


class Dispatcher:
    """Runs orders through the API, one call at a time per caller; shared by all workers.

    Concurrency is its callers': each worker takes one order at a time and the run starts
    ``concurrency`` of them, so at most that many requests are ever in flight (no semaphore to
    pass on every request)."""

    def __init__(
        self,
        *,
        client: MouvoneClient,
        tokens: TokenProvider,
        limiter: RateLimiter,
        table: OutcomeTable,
        policy: RetryPolicy,
        control: RunControl,
        clock: Clock,
        breaker: CircuitBreaker,
        still_mine: Callable[[OrderState], Awaitable[bool]] | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self._client = client
        self._tokens = tokens
        self._limiter = limiter
        self._table = table
        self._policy = policy
        self._control = control
        self._clock = clock
        self._breaker = breaker
        self._still_mine = still_mine  # checked after the limiter, right before sending
        self._metrics = metrics or Metrics()
        self._probe = asyncio.Lock()
        self._credentials_accepted = asyncio.Event()
        self._quota_since: float | None = None  # first quota answer of the current streak

    async def process(self, state: OrderState) -> Result:
        """Take one order to an outcome; `pending` when the run stops first. Never raises.

        Until one answer has shown that the credentials are accepted, orders go one at a time
        (the first is a probe, holding the probe lock until an answer other than 401/403), so
        wrong credentials stop the run after a request or two instead of a whole round of
        ``concurrency`` refusals.
        """
        if not self._credentials_accepted.is_set():
            await self._probe.acquire()
            if self._credentials_accepted.is_set():
                self._probe.release()
            else:
                state.probing = True
        try:
            if state.verify:
                settled = await self._verify(state)
                if settled is not None:
                    return settled
            while True:
                try:
                    sent = await self._attempt(state)
                except FatalApiError as exc:
                    return self._stop(state, str(exc))
                if sent is None:
                    if state.lost:
                        return state.result(Outcome.PENDING, "not sent: another consumer has it")
                    return state.result(Outcome.PENDING, "not sent: the run was stopping")
                done = await self._handle(state, *sent)
                if done is not None:
                    return done
                self._metrics.retries[_retry_reason(sent[0], self._breaker.is_open)] += 1
        finally:
            self._end_probe(state)

    def _end_probe(self, state: OrderState) -> None:
        if state.probing:
            state.probing = False
            self._probe.release()

    async def _handle(self, state: OrderState, answer: Answer, token: str) -> Result | None:
        """The order's result, or None to send it again."""
        verdict = self._table.classify(answer.status, answer.code, answer.failure)
        action = verdict.action
        if action is Action.FINAL:
            assert verdict.outcome is not None
            self._limiter.speed_up()
            return state.result(verdict.outcome)
        if action is Action.REAUTH and not state.reauthed:
            state.reauthed = True
            return await self._refresh(state, token)
        if action in (Action.REAUTH, Action.FATAL) or (
            action is Action.QUOTA and answer.retry_after_s is None
        ):
            return self._stop(state, _fatal_reason(state.order_id, answer, state.reauthed))
        if action in (Action.QUOTA, Action.THROTTLE):
            if not self._gateway_pause(action, answer):
                return state.pending()
            if action is Action.QUOTA:
                return None
        elif self._breaker.is_open and not state.breaker_probe and is_outage(answer):
            return None  # sent before the outage was noticed: not counted, admit() waits
        state.failures += 1
        if state.failures >= self._policy.max_attempts:
            return state.result(Outcome.RETRYABLE_FAILED)
        return None if await self._backoff(state.failures, answer) else state.pending()

    def _gateway_pause(self, action: Action, answer: Answer) -> bool:
        """Pause everyone for a 429 or a quota answer; False when the run must stop instead."""
        if action is Action.THROTTLE:
            self._limiter.slow_down()
            return self._pause_all(answer.retry_after_s)
        assert answer.retry_after_s is not None
        now = self._clock.monotonic()
        if self._quota_since is None:
            self._quota_since = now
        # A quota that keeps coming back counts as one long wait: max_wait bounds it too.
        return self._pause_all(answer.retry_after_s, now - self._quota_since + answer.retry_after_s)

    def _stop(self, state: OrderState, reason: str) -> Result:
        self._control.abort(reason)
        return state.pending()

    async def _attempt(self, state: OrderState) -> tuple[Answer, str] | None:
        """Send one DELETE when the breaker and the limiter admit it; None if the run stops
        before that. (The send is inline, not a method of its own: every coroutine frame is
        resumed again at each suspension of the request.)"""
        breaker = self._breaker
        admitted = await breaker.admit() if breaker.is_open else None
        if admitted is False:
            self._control.abort(
                f"the API has been failing (5xx, timeouts, connection errors) for more than "
                f"{breaker.outage_s():.0f}s (outage timeout): resume the run later"
            )
            return None
        state.breaker_probe = probe = admitted is True
        answer: Answer | None = None
        try:
            token = await self._tokens.get()
            await self._limiter.acquire()
            if self._control.stopping:
                return None
            if self._still_mine is not None and not await self._still_mine(state):
                state.lost = True
                return None
            state.attempts += 1
            self._control.requests += 1
            state.in_flight = True
            self._metrics.in_flight += 1
            try:
                answer = await self._client.cancel(state.order_id, token)
            finally:
                state.in_flight = False
                self._metrics.in_flight -= 1
        finally:
            if probe and answer is None:
                breaker.release_probe()
        self._metrics.answered(answer)
        state.last = answer
        breaker.record(answer, probe=probe, first=state.attempts == 1)
        if answer.status is not None and answer.status not in (401, 403):
            self._credentials_accepted.set()
            self._end_probe(state)  # the others need not wait for this order to end
            self._quota_since = None
        return answer, token

    async def _verify(self, state: OrderState) -> Result | None:
        """Ask the API about an order an earlier request may already have reached (a run that
        was killed, a queue entry delivered before). Only the API's own word settles it without
        a DELETE: the order shown `Cancelled`, or the API's CUSTOMER_ORDER_NOT_FOUND. Anything
        else (a draft, a bare 404, an error, no answer) sends the DELETE, whose answer is the
        authority."""
        token = await self._tokens.get()
        await self._limiter.acquire()
        if self._control.stopping:
            return state.pending()
        self._control.requests += 1
        answer, body = await self._client.fetch(self._client.order_url(state.order_id), token)
        self._metrics.answered(answer)
        if answer.failure is not None:
            return None
        settled: Result | None = None
        if answer.status == 200 and isinstance(body, dict) and body.get("status") == "Cancelled":
            code = "ORDER_ALREADY_CANCELED"
            settled = Result(state.order_id, Outcome.ALREADY_CANCELLED, 200, code)
        elif answer.status == 400 and answer.code == "CUSTOMER_ORDER_NOT_FOUND":
            settled = Result(state.order_id, Outcome.NOT_FOUND, 400, answer.code)
        if settled is None:
            return None
        log.info("order_settled_by_get", order_id=state.order_id, outcome=settled.outcome.value)
        note = "found so by GET before sending again (an earlier request may have reached it)"
        return replace(settled, message=note)

    async def _refresh(self, state: OrderState, stale: str) -> Result | None:
        """Refresh the token once for everyone; None to send again, else the run stops."""
        try:
            await self._tokens.refresh(stale)
        except FatalApiError as exc:
            return self._stop(state, str(exc))
        return None

    def _pause_all(self, retry_after_s: float | None, in_a_row_s: float = 0.0) -> bool:
        """Pause every worker; False (and the run aborted) when the wait is over max_wait."""
        wait = DEFAULT_THROTTLE_PAUSE_S if retry_after_s is None else retry_after_s
        longest = max(wait, in_a_row_s)
        if longest > self._policy.max_wait_s:
            self._control.abort(
                f"the gateway asked to wait {longest:.0f}s (Retry-After), longer "
                f"than max_wait {self._policy.max_wait_s:.0f}s: resume the run later"
            )
            return False
        self._limiter.pause(wait)
        self._metrics.waited("retry_after", wait)
        return True

    async def _backoff(self, failures: int, answer: Answer) -> bool:
        """Sleep before the next attempt; False when the run is stopping instead."""
        if self._control.stopping:
            return False
        delay = self._policy.backoff.delay(failures, answer.retry_after_s)
        self._metrics.waited("backoff", delay)
        await self._clock.sleep(delay)
        return not self._control.stopping


def _retry_reason(answer: Answer, outage: bool) -> str:
    if answer.status == 401:
        return "reauth"
    if answer.status == 429:
        return "throttle"
    if answer.status == 403:
        return "quota"
    return "outage" if outage else "retry"


def _fatal_reason(order_id: str, answer: Answer, reauthed: bool) -> str:
    if answer.status == 401:
        after = " after a token refresh" if reauthed else ""
        return (
            f"the API answered 401{after} (order {order_id}): the access token or the API key "
            f"(MOUVONE_API_KEY) is not accepted" + (f": {answer.message}" if answer.message else "")
        )
    if answer.status == 403:
        return f"the API answered 403 without Retry-After (order {order_id}): access denied" + (
            f": {answer.message}" if answer.message else ""
        )
    detail = answer.code or f"HTTP {answer.status}"
    return f"fatal API answer {detail} (order {order_id})" + (
        f": {answer.message}" if answer.message else ""
    )
