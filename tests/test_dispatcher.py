"""The dispatcher's decisions on a virtual clock (aioresponses for the API): a 429 pauses every
worker for Retry-After and halves the pace, a quota answer pauses or stops, 5xx answers back
off and run out, fatal answers stop the run, an outage longer than --outage-timeout stops it.
No test waits in real time: sleeping moves the virtual clock straight to the next wake-up."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aioresponses import aioresponses
from yarl import URL

from tests.fakes import FakeClock
from tests.support import MOCKED_API, mocked_api_settings
from worker.api.connection import ApiConnection as Api
from worker.api.connection import connect
from worker.domain.classifier import OutcomeTable
from worker.domain.models import Outcome, Result
from worker.domain.retry import RetryPolicy
from worker.pipeline.breaker import CircuitBreaker
from worker.pipeline.control import RunControl
from worker.pipeline.dispatcher import Dispatcher
from worker.pipeline.order import OrderState

BASE = MOCKED_API
RATE = 100.0


def url(n: int = 1) -> URL:
    """The DELETE URL of order n."""
    return URL(f"{BASE}/customer-orders/ABC{n:010d}")


@pytest.fixture
def clock() -> FakeClock:
    """Virtual time."""
    return FakeClock()


@pytest.fixture
async def api(tmp_path: Path, clock: FakeClock) -> AsyncIterator[Api]:
    """A connection with a static token, its limiter on the virtual clock."""
    settings = mocked_api_settings(tmp_path, rate=RATE, backoff_base=0.5, backoff_cap=4)
    connected = connect(settings, clock)
    yield connected
    await connected.close()


def dispatcher(
    api: Api,
    clock: FakeClock,
    control: RunControl,
    attempts: int = 3,
    outage_s: float = 600,
) -> Dispatcher:
    """A dispatcher over this connection on the virtual clock, its breaker sized for four
    workers (a window of six orders)."""
    return Dispatcher(
        client=api.client,
        tokens=api.tokens,
        limiter=api.limiter,
        table=OutcomeTable.load(None),
        policy=RetryPolicy(attempts, 60, api.backoff),
        control=control,
        clock=clock,
        breaker=CircuitBreaker.for_workers(clock, outage_timeout_s=outage_s, workers=4),
    )


async def process(clock: FakeClock, d: Dispatcher, *orders: int) -> list[Result]:
    """Take these orders to their results together, driving virtual time."""
    tasks = [asyncio.ensure_future(d.process(OrderState(url(n).name))) for n in orders]
    await clock.run(*tasks)
    return [t.result() for t in tasks]


async def test_a_429_pauses_for_retry_after_and_halves_the_pace(api: Api, clock: FakeClock) -> None:
    """429 with Retry-After 7: nothing is sent for 7 s, the pace halves, then the order goes."""
    control = RunControl()
    with aioresponses() as mocked:
        mocked.delete(url(), status=429, headers={"Retry-After": "7"})
        mocked.delete(url(), status=200)
        start = clock.now
        [result] = await process(clock, dispatcher(api, clock, control), 1)
    assert result.outcome is Outcome.CANCELLED
    assert result.attempts == 2
    assert clock.now - start >= 7
    assert api.limiter.paused_total_s >= 7
    assert api.limiter.lowest_pace_per_s == pytest.approx(RATE / 2)
    assert api.limiter.pace_per_s < RATE  # climbing back slowly
    assert control.exit_code is None


async def test_a_quota_answer_pauses_or_stops(api: Api, clock: FakeClock) -> None:
    """403 with Retry-After within --max-wait pauses and goes on; without Retry-After it is
    fatal: the order stays pending and the run stops with exit 3."""
    control = RunControl()
    with aioresponses() as mocked:
        mocked.delete(url(1), status=403, headers={"Retry-After": "30"})
        mocked.delete(url(1), status=200)
        start = clock.now
        [paused] = await process(clock, dispatcher(api, clock, control), 1)
        assert paused.outcome is Outcome.CANCELLED
        assert clock.now - start >= 30
        mocked.delete(url(2), status=403, payload={"statusCode": 403, "message": "Out of quota"})
        [stopped] = await process(clock, dispatcher(api, clock, control), 2)
    assert stopped.outcome is Outcome.PENDING
    assert control.exit_code == 3


async def test_5xx_backs_off_and_runs_out(api: Api, clock: FakeClock) -> None:
    """503s are retried after jittered, capped backoff; after max_attempts the order is
    retryable_failed with the last answer's code, and the run goes on."""
    control = RunControl()
    with aioresponses() as mocked:
        mocked.delete(url(1), status=503)
        mocked.delete(url(1), status=503)
        mocked.delete(url(1), status=200)
        [recovered] = await process(clock, dispatcher(api, clock, control), 1)
        backoffs = [s for s in clock.slept if s > 0.05]  # not the limiter's spacing
        for _ in range(3):
            mocked.delete(url(2), status=503)
        [failed] = await process(clock, dispatcher(api, clock, control), 2)
    assert recovered.outcome is Outcome.CANCELLED
    assert recovered.attempts == 3
    assert all(s <= 4 for s in clock.slept)
    assert len(backoffs) <= 2
    assert failed.outcome is Outcome.RETRYABLE_FAILED
    assert failed.attempts == 3
    assert failed.http_status == 503
    assert control.exit_code is None


async def test_a_fatal_answer_stops_the_run(api: Api, clock: FakeClock) -> None:
    """A refused static token (401) and the gateway's bare 404 stop the run at once: the
    order stays pending, exit 3, the reason says what to fix."""
    for status, payload, hint in (
        (401, {"statusCode": 401, "message": "Unauthorized"}, "MOUVONE_ACCESS_TOKEN"),
        (404, {"statusCode": 404, "message": "Resource not found"}, ""),
    ):
        control = RunControl()
        with aioresponses() as mocked:
            mocked.delete(url(), status=status, payload=payload)
            [result] = await process(clock, dispatcher(api, clock, control), 1)
        assert result.outcome is Outcome.PENDING
        assert result.attempts == 1
        assert control.exit_code == 3
        assert hint in (control.reason or "")


async def test_an_outage_longer_than_the_timeout_stops_the_run(api: Api, clock: FakeClock) -> None:
    """Every order failing with 503: the breaker opens, probes one at a time, and once the
    outage has lasted --outage-timeout (120 s of virtual time) the run stops with exit 3;
    no order is recorded final or run out of attempts meanwhile."""
    control = RunControl()
    with aioresponses() as mocked:
        for n in range(1, 9):
            mocked.delete(url(n), status=503, repeat=True)
        start = clock.now
        d = dispatcher(api, clock, control, attempts=1000, outage_s=120)
        results = await process(clock, d, *range(1, 9))
    assert control.exit_code == 3
    assert "outage timeout" in (control.reason or "")
    assert clock.now - start >= 120
    assert {r.outcome for r in results} == {Outcome.PENDING}
