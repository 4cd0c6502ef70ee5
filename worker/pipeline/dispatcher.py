"""One order's life: token -> rate limiter -> client -> classifier -> retry policy."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from functools import partial

import structlog

from worker.api.auth import TokenProvider
from worker.api.client import MouvoneClient
from worker.api.connection import (
    AccessParts,
    Reader,
    RetriesExhaustedError,
    StoppingError,
    obey,
    slot_and_token,
)
from worker.api.headers import request_ids
from worker.api.limiter import RateLimiter
from worker.domain.answer import Answer
from worker.domain.classifier import Action, OutcomeTable, error_code_for
from worker.domain.decision import Decision, Situation, Step, decide, is_outage, retry_reason
from worker.domain.errors import ApiConfigError, FatalApiError
from worker.domain.models import OUTAGE_TIMEOUT, Outcome, Result
from worker.domain.prediction import predict
from worker.domain.retry import RetryPolicy
from worker.pipeline.breaker import CircuitBreaker
from worker.pipeline.control import RunControl
from worker.pipeline.lookup import before_sending
from worker.pipeline.order import OrderState
from worker.runtime.clock import Clock
from worker.runtime.metrics import Metrics

log = structlog.get_logger(__name__)

# why an order was not sent when its slot came: the run stopping, or it was found another's
NOT_SENT = {False: "not sent: the run was stopping", True: "not sent: another run holds it now"}


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
        still_mine: Callable[[OrderState], Awaitable[bool | None]] | None = None,
        metrics: Metrics | None = None,
        required: frozenset[str] | None = None,
        predict: bool = False,
    ) -> None:
        self._client = client
        self._tokens = tokens
        self._limiter = limiter
        self._admitted = limiter.admitted.append  # the slots the gateway admitted: it learns
        self._table = table
        self._policy = policy
        self._control = control
        self._clock = clock
        self._breaker = breaker
        self._still_mine = still_mine  # checked after the limiter, right before sending
        self._required = required  # --require-status: the statuses (lower case) it may be sent in
        self._predict = predict  # `check`: a GET predicts each order's outcome; no DELETE
        self._metrics = metrics or Metrics()
        # every answered request (order, method, its number, answer): the sink's attempt log
        self.on_attempt: Callable[[OrderState, str, int, Answer], None] | None = None
        # when it says so, an order waits for its backoff on the pool's shelf (a timer) instead
        # of in its worker: ``process`` returns None with ``state.due_in`` set
        self.may_shelve: Callable[[], bool] | None = None
        self._reader = Reader(
            AccessParts(client, tokens, limiter, policy.backoff),
            table,
            clock,
            max_attempts=policy.max_attempts,
            max_wait_s=policy.max_wait_s,
            stopping=lambda: control.stopping,
            metrics=self._metrics,
            on_request=control.count_request,
        )
        self._probe = asyncio.Lock()
        self._api_answered = False  # until then, a host that cannot be reached is a mistake
        self._credentials_accepted = asyncio.Event()
        self._quota_since: float | None = None  # first quota answer of the current streak

    async def process(self, state: OrderState) -> Result | None:
        """Take one order to an outcome; `pending` when the run stops first; None when it is to
        wait ``state.due_in`` seconds for its next attempt on the pool's shelf (``may_shelve``), to
        be processed again then. Never raises.

        Until one answer has shown that the credentials are accepted, orders go one at a time
        (the first is a probe, holding the probe lock until an answer other than 401/403), so
        wrong credentials stop the run after a request or two instead of a whole round of
        ``concurrency`` refusals.
        """
        if not self._credentials_accepted.is_set():
            await self._enter_probe(state)
        try:
            if self._predict:
                return await self._predicted(state)
            if (state.verify or self._required is not None) and not state.resumed:
                settled = await self._look_up(state)
                if settled is not None:
                    return settled
            while True:
                try:
                    sent = await self._attempt(state)
                    if sent is None:
                        return state.result(Outcome.PENDING, NOT_SENT[state.lost])
                    done = await self._handle(state, *sent)
                except FatalApiError as exc:
                    return self._stop(state, str(exc), exc.exit_code)
                if done is not None:
                    return done
                self._metrics.retries[retry_reason(sent[0].status, self._breaker.is_open)] += 1
                if state.due_in is not None:
                    return None  # shelved: a timer, not this worker, waits for its backoff
        finally:
            self._end_probe(state)

    async def _enter_probe(self, state: OrderState) -> None:
        """Credentials not proven yet: one order at a time (the first is the probe)."""
        await self._probe.acquire()
        if self._credentials_accepted.is_set():
            self._probe.release()
        else:
            state.probing = True

    def _end_probe(self, state: OrderState) -> None:
        if state.probing:
            state.probing = False
            self._probe.release()

    async def _handle(self, state: OrderState, answer: Answer, generation: int) -> Result | None:
        """The order's result, or None to send it again."""
        verdict = self._table.classify(answer.status, answer.code, answer.failure)
        if answer.status != 429:
            self._admitted(state.slot)
        if verdict.action is Action.FINAL:  # the common case, without the rest
            self._limiter.speed_up()
            return state.result(verdict.outcome)  # type: ignore[arg-type]
        refused = state.refresh_generation is not None and generation >= state.refresh_generation
        while True:
            situation = Situation(
                failures=state.failures,
                max_attempts=self._policy.max_attempts,
                max_wait_s=self._policy.max_wait_s,
                refused_after_refresh=refused,
                quota_streak_s=self._quota_streak_s(verdict.action),
                outage=self._breaker.view(),
                held=state.held,
            )
            decision = decide(verdict, answer, situation, self._policy.backoff, state.what)
            if decision.step is not Step.HOLD:
                break
            state.held = True
            await self._breaker.verdict()
        return await self._carry_out(state, decision)

    async def _carry_out(self, state: OrderState, decision: Decision) -> Result | None:
        if decision.counted:
            state.failures += 1
        last = state.last
        obey(self._limiter, decision, state.slot, last.limit_per_s if last is not None else None)
        if decision.pause_s is not None:
            self._metrics.waited("retry_after", decision.pause_s)
        step = decision.step
        if step is Step.RECORD:
            assert decision.outcome is not None
            return state.result(decision.outcome)
        if step is Step.STOP:
            return self._stop(state, decision.reason)
        if step is Step.REAUTH:
            await self._tokens.refresh(state.token)
            state.refresh_generation = self._tokens.generation
            return None
        delay = decision.delay_s
        if self.may_shelve is not None and delay > 0 and not state.probing and self.may_shelve():
            if self._control.stopping:
                return state.pending()
            self._metrics.waited("backoff", delay)
            state.due_in = delay
            return None
        return None if await self._backoff(delay) else state.pending()

    def _quota_streak_s(self, action: Action) -> float:
        if action is not Action.QUOTA:
            return 0.0
        now = self._clock.monotonic()
        if self._quota_since is None:
            self._quota_since = now
        return now - self._quota_since

    def _stop(self, state: OrderState, reason: str, exit_code: int = 3) -> Result:
        self._control.abort(reason, exit_code)
        return state.pending()

    async def _attempt(self, state: OrderState) -> tuple[Answer, int] | None:
        """Send one DELETE when the breaker and the limiter admit it; None if the run stops
        before that, or the order is found another's. (The send is inline: docs/development.md,
        "The hot path".)"""
        if (self._breaker.is_open or self._control.stopping) and not await self._admitted_by(state):
            return None
        tokens = self._tokens
        mine = None if self._still_mine is None else partial(self._mine, state)
        taken = await slot_and_token(self._limiter, tokens, self._stopped, mine)
        if taken is None:
            return None
        due, token = taken
        state.token = token
        state.slot = due
        generation = tokens.generation
        state.attempts += 1
        self._control.requests += 1
        state.in_flight = True
        self._metrics.in_flight += 1
        request_id = request_ids()
        sent_at = time.time()
        try:
            answer = await self._client.cancel(state.order_id, token, request_id)
        except asyncio.CancelledError:
            self._abandoned(state, request_id, sent_at)
            raise
        finally:
            state.in_flight = False
            self._metrics.in_flight -= 1
        self._noted(state, answer)
        return answer, generation

    def _abandoned(self, state: OrderState, request_id: str, sent_at: float) -> None:
        """The run stopped with this DELETE on the wire (the end of --grace, a second signal):
        the attempt log keeps it, its request id and no answer, so that the API's owner can
        look it up."""
        if self.on_attempt is not None:
            answer = Answer(
                None,
                failure="abandoned",
                message="no answer: the run stopped before it came (end of --grace, or a "
                "second signal); the order may have been cancelled",
                request_id=request_id,
                sent_at=sent_at,
            )
            self.on_attempt(state, "DELETE", state.attempts, answer)

    async def _admitted_by(self, state: OrderState) -> bool:
        """Through an open breaker: True once a probe has shown the API up; False when the run
        stops, or the outage outlasted its timeout (the run is aborted)."""
        breaker = self._breaker
        admitted = await breaker.admit() if breaker.is_open else None
        while admitted is True and not await self._api_is_up(state):
            if self._control.stopping:
                return False
            admitted = await breaker.admit() if breaker.is_open else None
        if admitted is False:
            self._control.abort(
                f"the API has been failing (5xx, timeouts, connection errors) for more than "
                f"{breaker.outage_s():.0f}s {OUTAGE_TIMEOUT}"
            )
            return False
        return not self._control.stopping

    async def _api_is_up(self, state: OrderState) -> bool:
        """The breaker's probe: one GET of this order, which any API that is up answers
        (whatever the order's own DELETE does: orders that fail again and again are not an
        outage). Its answer goes to the breaker (closing it, or opening it again for longer)
        and to the attempt log; False while the API is down, or when the run stops."""
        try:
            answer = await self._reader.once(self._client.order_url(state.order_id))
        except StoppingError:
            self._breaker.release_probe()
            return False
        self._looked_up(state, answer)
        self._breaker.record(answer, probe=True, order=state.order_id)
        return not is_outage(answer)

    def _stopped(self) -> bool:
        return self._control.stopping

    async def _mine(self, state: OrderState) -> bool:
        """Still this run's, right before its DELETE (its source's check); lost when not (not
        when the check failed: the run stops, and the order stays as the ledger has it)."""
        assert self._still_mine is not None
        mine = await self._still_mine(state)
        state.lost = mine is False
        return mine is True

    def _noted(self, state: OrderState, answer: Answer) -> None:
        """What one answer tells the run: metrics, the breaker, credentials accepted."""
        self._metrics.answered(answer)
        if answer.status is None:
            if answer.unreachable is not None and not self._api_answered:
                state.attempts -= 1  # it never left: no attempt spent, no request sent
                self._control.requests -= 1
                raise ApiConfigError(
                    f"cannot reach the API {answer.unreachable} (MOUVONE_BASE_URL): "
                    "nothing was sent"
                )
        else:
            self._api_answered = True
        if self.on_attempt is not None:
            self.on_attempt(state, "DELETE", state.attempts, answer)
        state.last = answer
        self._breaker.record(answer, probe=False, order=state.order_id)
        if answer.status is not None and answer.status not in (401, 403):
            self._credentials_accepted.set()
            self._end_probe(state)  # the others need not wait for this order to end
            self._quota_since = None

    async def _look_up(self, state: OrderState) -> Result | None:
        """The GET before the DELETE (worker.pipeline.lookup): the order's result when that
        settles it, None to send it."""
        url = self._client.order_url(state.order_id)
        while True:
            breaker = self._breaker
            if (breaker.is_open or self._control.stopping) and not await self._admitted_by(state):
                return state.pending()
            try:
                settled = await before_sending(
                    self._reader, state, url, self._required, partial(self._before_sending, state)
                )
            except StoppingError:
                return state.pending()
            except FatalApiError as exc:
                return self._stop(state, str(exc), exc.exit_code)
            if settled is None or settled.outcome is not Outcome.RETRYABLE_FAILED:
                break
            if not breaker.is_open:
                break  # its own failures: the order's outcome
            # an outage's failures, not the order's: look again once a probe shows the API up
        if settled is not None:
            log.info("order_settled_by_get", order_id=state.order_id, outcome=settled.outcome.value)
        return settled

    async def _predicted(self, state: OrderState) -> Result:
        """`check`: what the DELETE would answer, from what a GET answers (nothing is sent
        that changes an order)."""
        url = self._client.order_url(state.order_id)
        try:
            answer, body = await self._reader.get(url, partial(self._looked_up, state))
        except RetriesExhaustedError as exc:
            last = exc.answer
            code = error_code_for(last.status, last.code, last.failure)
            return Result(state.order_id, Outcome.RETRYABLE_FAILED, last.status, code, str(exc))
        except StoppingError:
            return state.pending()
        except FatalApiError as exc:
            return self._stop(state, str(exc), exc.exit_code)
        return predict(state.order_id, answer, body, self._table)

    def _before_sending(self, state: OrderState, answer: Answer) -> None:
        """A look-up before the DELETE was answered: as any GET, and counted by the breaker
        (an outage seen through look-ups opens it, as through DELETEs)."""
        self._looked_up(state, answer)
        self._breaker.record(answer, probe=False, order=state.order_id)

    def _looked_up(self, state: OrderState, answer: Answer) -> None:
        """A GET before the DELETE was answered: the attempt log has it too, and an answer
        other than 401/403 proves the credentials as a DELETE's does (the other orders need
        not wait for this one's look-up to end, even when no DELETE follows)."""
        state.lookups += 1
        if self.on_attempt is not None:
            self.on_attempt(state, "GET", state.lookups, answer)
        if answer.status is not None and answer.status not in (401, 403):
            self._credentials_accepted.set()
            self._end_probe(state)

    async def _backoff(self, delay: float) -> bool:
        """Sleep before the next attempt; False when the run is stopping instead."""
        if self._control.stopping:
            return False
        if delay > 0:
            self._metrics.waited("backoff", delay)
            await self._clock.sleep(delay)
        return not self._control.stopping
