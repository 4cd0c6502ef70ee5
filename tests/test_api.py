"""The reads (GET) of `select`, `check` and the look-up before a resend: retries, token
refresh, pauses and fatal answers, with aioresponses and a clock that never sleeps."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aioresponses import aioresponses
from yarl import URL

from tests.fakes import InstantClock
from tests.support import MOCKED_API, mocked_api_settings
from worker.api.connection import ApiConnection, Reader, RetriesExhaustedError, connect
from worker.domain.classifier import OutcomeTable
from worker.domain.errors import FatalApiError
from worker.domain.retry import RetryPolicy
from worker.pipeline.breaker import CircuitBreaker
from worker.pipeline.control import RunControl
from worker.pipeline.dispatcher import Dispatcher
from worker.pipeline.order import OrderState

BASE = MOCKED_API
ORDER = URL(f"{BASE}/customer-orders/ABC0000000001")


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[ApiConnection]:
    """A connection with a static token (a refresh of it is fatal)."""
    settings = mocked_api_settings(tmp_path, rate=1000, backoff_base=0.01, backoff_cap=0.02)
    connected = connect(settings, InstantClock())
    yield connected
    await connected.close()


def dispatcher_for(api: ApiConnection, control: RunControl) -> Dispatcher:
    """A dispatcher over this connection, three attempts, on an instant clock."""
    clock = InstantClock()
    return Dispatcher(
        client=api.client,
        tokens=api.tokens,
        limiter=api.limiter,
        table=OutcomeTable.load(None),
        policy=RetryPolicy(3, 60, api.backoff),
        control=control,
        clock=clock,
        breaker=CircuitBreaker(clock, outage_timeout_s=60),
    )


def reader(api: ApiConnection, max_attempts: int = 3, max_wait_s: float = 60) -> Reader:
    """A Reader over this connection."""
    table = OutcomeTable.load(None)
    return Reader(api, table, InstantClock(), max_attempts=max_attempts, max_wait_s=max_wait_s)


async def test_retries_then_reads(api: ApiConnection) -> None:
    """5xx, a reset and a 429 are retried; the 200's JSON comes back; the 429 pauses all."""
    with aioresponses() as mocked:
        mocked.get(ORDER, status=503, body="<html>down</html>")
        mocked.get(ORDER, status=429, headers={"Retry-After": "2"}, payload={"statusCode": 429})
        mocked.get(ORDER, status=200, payload={"customerOrderId": "ABC0000000001"})
        r = reader(api, max_attempts=5)
        answer, body = await r.get(ORDER)
    assert answer.status == 200
    assert body == {"customerOrderId": "ABC0000000001"}
    assert r.requests == 3
    assert api.limiter.paused_total_s == pytest.approx(2, abs=0.05)
    assert api.limiter.pace_per_s < 1000  # the 429 lowered the pace


async def test_api_refusals_are_returned(api: ApiConnection) -> None:
    """A 400 with a final code and a 404 with the API's own error object are answers for the
    caller, not errors."""
    with aioresponses() as mocked:
        body = {"timestamp": "t", "code": "CUSTOMER_ORDER_NOT_FOUND", "message": None}
        mocked.get(ORDER, status=400, payload=body)
        mocked.get(ORDER, status=404, payload=body)
        first = await reader(api).get(ORDER)
        second = await reader(api).get(ORDER)
    assert (first[0].status, first[0].code, first[1]) == (400, "CUSTOMER_ORDER_NOT_FOUND", None)
    assert (second[0].status, second[0].code, second[1]) == (404, "CUSTOMER_ORDER_NOT_FOUND", None)


async def test_a_bare_404_is_fatal(api: ApiConnection) -> None:
    """The gateway's own 404 ("Resource not found") says the base URL misses the API: the
    read stops with FatalApiError naming the setting, after one request."""
    with aioresponses() as mocked:
        mocked.get(ORDER, status=404, payload={"statusCode": 404, "message": "Resource not found"})
        r = reader(api)
        with pytest.raises(FatalApiError, match="MOUVONE_BASE_URL"):
            await r.get(ORDER)
    assert r.requests == 1


async def test_failures_on_every_attempt(api: ApiConnection) -> None:
    """A read that fails on every allowed attempt raises RetriesExhaustedError with the last
    answer."""
    with aioresponses() as mocked:
        for _ in range(3):
            mocked.get(ORDER, status=502, body="")
        with pytest.raises(RetriesExhaustedError, match="HTTP 502") as caught:
            await reader(api, max_attempts=3).get(ORDER)
    assert caught.value.answer.status == 502


@pytest.mark.parametrize(
    ("status", "payload", "headers", "message"),
    [
        (401, {"statusCode": 401, "message": "Unauthorized"}, None, "MOUVONE_ACCESS_TOKEN"),
        (403, {"statusCode": 403, "message": "Forbidden"}, None, "access denied"),
        (403, {"statusCode": 403}, {"Retry-After": "3600"}, "longer than max_wait"),
        (400, {"timestamp": "t", "code": "USER_ID_INVALID", "message": None}, None, "USER_ID"),
    ],
)
async def test_fatal_answers(
    api: ApiConnection,
    status: int,
    payload: dict[str, object],
    headers: dict[str, str] | None,
    message: str,
) -> None:
    """Refused credentials, access denied, a quota wait over max_wait and fatal codes stop the
    read with FatalApiError."""
    with aioresponses() as mocked:
        mocked.get(ORDER, status=status, payload=payload, headers=headers, repeat=True)
        with pytest.raises(FatalApiError, match=message):
            await reader(api, max_wait_s=60).get(ORDER)


@pytest.mark.parametrize(
    ("get_status", "get_payload", "sent"),
    [
        (404, {"timestamp": "t", "code": "CUSTOMER_ORDER_NOT_FOUND", "message": None}, False),
        (200, {"customerOrderId": "ABC0000000001", "status": "Draft"}, True),
        (200, {"customerOrderId": "ABC0000000001", "status": "Cancelled"}, False),
        (500, {"statusCode": 500}, True),
    ],
)
async def test_look_up_before_sending_again(
    api: ApiConnection, get_status: int, get_payload: dict[str, object], sent: bool
) -> None:
    """An order an earlier request may have reached is looked up first: only the order shown
    cancelled (or the API's CUSTOMER_ORDER_NOT_FOUND) is settled without a DELETE."""
    dispatcher = dispatcher_for(api, RunControl())
    with aioresponses() as mocked:
        mocked.get(ORDER, status=get_status, payload=get_payload)
        mocked.delete(ORDER, status=200)
        result = await dispatcher.process(OrderState("ABC0000000001", verify=True))
        deletes = [k for k in mocked.requests if k[0] == "DELETE"]
    assert bool(deletes) is sent
    settled = "already_cancelled" if get_status == 200 else "not_found"
    assert result.outcome.value == ("cancelled" if sent else settled)


async def test_a_refused_token_during_the_look_up_stops_the_run(api: ApiConnection) -> None:
    """A 401 during the look-up before a resend (the static token refused) is a fatal answer
    like any other: the order stays pending, the run stops with exit 3 and one reason, no
    DELETE is sent and nothing raises."""
    control = RunControl()
    dispatcher = dispatcher_for(api, control)
    with aioresponses() as mocked:
        mocked.get(ORDER, status=401, payload={"statusCode": 401, "message": "Unauthorized"})
        result = await dispatcher.process(OrderState("ABC0000000001", verify=True))
        deletes = [k for k in mocked.requests if k[0] == "DELETE"]
    assert result.outcome.value == "pending"
    assert deletes == []
    assert control.exit_code == 3
    assert "MOUVONE_ACCESS_TOKEN" in (control.reason or "")


async def test_the_reads_teach_the_limiter(api: ApiConnection) -> None:
    """Every GET the gateway admits is counted for the limiter's learning, and a GET's 429 with
    the gateway's limit sets the pace there (it used to halve the pace, knowing nothing)."""
    with aioresponses() as mocked:
        for _ in range(3):
            mocked.get(ORDER, status=200, payload={"customerOrderId": "ABC0000000001"})
        mocked.get(ORDER, status=429, headers={"Retry-After": "0", "X-RateLimit-Limit": "200"},
                   payload={"statusCode": 429})  # fmt: skip
        mocked.get(ORDER, status=200, payload={"customerOrderId": "ABC0000000001"})
        r = reader(api, max_attempts=5)
        for _ in range(4):
            await r.get(ORDER)
    assert len(api.limiter.admitted) == 4  # the 429 is not among the admitted
    assert api.limiter.learned_per_s == pytest.approx(200, rel=0.05)
    assert api.limiter.pace_per_s > 150  # at the limit it was told, not halved to 500
