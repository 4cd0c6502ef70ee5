"""The HTTP client, with aioresponses: headers, answers, faults, and the ID kept in one segment."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aioresponses import aioresponses

from worker.api.client import MouvoneClient, new_session, order_url
from worker.domain.answer import Answer
from worker.domain.classifier import Action, OutcomeTable
from worker.simulator import RunningSimulator

BASE = "https://api.test/customer-orders/v1"
URL = re.compile(r"^https://api\.test/customer-orders/v1/customer-orders/.*$")


@pytest.fixture
async def client() -> AsyncIterator[MouvoneClient]:
    session = new_session(4)
    yield MouvoneClient(session, BASE, "the-key", timeout_s=5)
    await session.close()


async def test_sends_both_credentials(client: MouvoneClient) -> None:
    """Every DELETE carries the bearer token and the subscription key."""
    with aioresponses() as mocked:
        mocked.delete(URL, status=200)
        answer = await client.cancel("ABC0000000001", "tok")
        (_method, url), calls = next(iter(mocked.requests.items()))
        headers = calls[0].kwargs["headers"]
    assert answer.status == 200
    assert str(url) == f"{BASE}/customer-orders/ABC0000000001"
    assert headers["Authorization"] == "Bearer tok"
    assert headers["Ocp-Apim-Subscription-Key"] == "the-key"


async def test_api_error_body(client: MouvoneClient) -> None:
    """A 400 carries the API's code and message."""
    body = {"timestamp": "2026-01-01T00:00:00Z", "code": "R0008", "message": "Submitted"}
    with aioresponses() as mocked:
        mocked.delete(URL, status=400, payload=body)
        answer = await client.cancel("ABC0000000001", "tok")
    assert (answer.status, answer.code, answer.message, answer.failure) == (
        400,
        "R0008",
        "Submitted",
        None,
    )


@pytest.mark.parametrize("body", ["<html>oops</html>", '{"code": ', '{"message": "no code"}', ""])
async def test_unreadable_400(client: MouvoneClient, body: str) -> None:
    """A 400 without the API's JSON code is unreadable, hence retryable, never final."""
    with aioresponses() as mocked:
        mocked.delete(URL, status=400, body=body)
        answer = await client.cancel("ABC0000000001", "tok")
    assert (answer.status, answer.failure) == (400, "unreadable")


async def test_gateway_answers(client: MouvoneClient) -> None:
    """APIM bodies give a message; Retry-After is parsed; HTML 5xx bodies are not kept."""
    with aioresponses() as mocked:
        mocked.delete(
            URL,
            status=429,
            payload={"statusCode": 429, "message": "Rate limit"},
            headers={"Retry-After": "7"},
        )
        mocked.delete(URL, status=503, body="<html>down</html>", content_type="text/html")
        throttled = await client.cancel("ABC0000000001", "tok")
        down = await client.cancel("ABC0000000001", "tok")
    assert (throttled.status, throttled.retry_after_s) == (429, 7.0)
    assert throttled.message == "Rate limit"
    assert (down.status, down.message, down.failure) == (503, None, None)


@pytest.mark.parametrize(
    ("exception", "failure"),
    [
        (TimeoutError(), "timeout"),
        (aiohttp.ServerDisconnectedError(), "connection"),
        (aiohttp.ClientConnectionError("refused"), "connection"),
        (aiohttp.ClientPayloadError("truncated"), "unreadable"),
    ],
)
async def test_transport_failures(
    client: MouvoneClient, exception: Exception, failure: str
) -> None:
    """Network faults become an Answer, never an exception."""
    with aioresponses() as mocked:
        mocked.delete(URL, exception=exception)
        answer = await client.cancel("ABC0000000001", "tok")
    assert (answer.status, answer.failure) == (None, failure)


@pytest.mark.parametrize(
    ("order_id", "segment"),
    [
        ("ABC0000000001", "ABC0000000001"),
        ("../admin", "%2E%2E%2Fadmin"),
        ("a/b", "a%2Fb"),
        ("a?x=1", "a%3Fx%3D1"),
        ("a#frag", "a%23frag"),
        ("a%2Fb", "a%252Fb"),
        ("..", "%2E%2E"),
        ("a b", "a%20b"),
        ("\u0410BC", "%D0%90BC"),
    ],
)
def test_order_url_is_one_segment(order_id: str, segment: str) -> None:
    """The ID is percent-encoded into exactly one path segment."""
    url = order_url(BASE, order_id)
    assert url.raw_path == f"/customer-orders/v1/customer-orders/{segment}"


async def _token(session: aiohttp.ClientSession, running: RunningSimulator) -> str:
    form = {
        "grant_type": "client_credentials",
        "client_id": "demo-client",
        "client_secret": "demo-secret",
    }
    async with session.post(running.token_url, data=form) as resp:
        return str((await resp.json())["access_token"])


@pytest.mark.parametrize("order_id", ["../x", "a/b", "a?b", "a#b", "%2F", "..", "a%b", " x"])
async def test_hostile_ids_reach_the_server_intact(sim: RunningSimulator, order_id: str) -> None:
    """Over real HTTP the server's DELETE route decodes exactly the ID that was sent."""
    session = new_session(2)
    try:
        client = MouvoneClient(session, sim.base_url, "demo-key", timeout_s=5)
        answer = await client.cancel(order_id, await _token(session, sim))
    finally:
        await session.close()
    assert answer.status == 200
    assert dict(sim.sim.stats.deletes) == {order_id: 1}


async def test_connection_reset_is_not_resent_silently(make_sim: object) -> None:
    """aiohttp's silent resend of an idempotent request is off: one reset, one request."""
    running = await make_sim(reset_rate=1.0)  # type: ignore[operator]
    session = new_session(2)
    try:
        client = MouvoneClient(session, running.base_url, "demo-key", timeout_s=5)
        answer = await client.cancel("ABC0000000001", await _token(session, running))
    finally:
        await session.close()
    assert answer.failure == "connection"
    assert running.sim.stats.deletes["ABC0000000001"] == 1


async def test_success_body_is_read(client: MouvoneClient) -> None:
    """A 200 with a body is still cancelled (the body is read so the connection is reused)."""
    with aioresponses() as mocked:
        mocked.delete(URL, status=200, payload={"customerOrderId": "ABC0000000001"})
        answer = await client.cancel("ABC0000000001", "tok")
    assert (answer.status, answer.failure) == (200, None)


async def test_huge_error_body_is_cut(client: MouvoneClient) -> None:
    """An oversized error body is not read whole."""
    with aioresponses() as mocked:
        mocked.delete(URL, status=503, body="x" * 1_000_000)
        answer = await client.cancel("ABC0000000001", "tok")
    assert (answer.status, answer.message) == (503, None)


async def test_redirects_are_not_followed() -> None:
    """A 3xx is an answer, not a place to send the DELETE and the credentials: the client
    returns it as it is, and the classifier retries it (never a final outcome)."""
    from aiohttp import web  # noqa: PLC0415

    hits: list[str] = []

    async def redirect(request: web.Request) -> web.Response:
        hits.append(request.method + " " + request.path)
        if request.path.startswith("/elsewhere"):
            return web.Response(status=200)
        raise web.HTTPFound("/elsewhere/customer-orders/ABC0000000001")

    runner, base = await _serve(redirect)
    session = new_session(4)
    try:
        client = MouvoneClient(session, base, "key", 5)
        answer = await client.cancel("ABC0000000001", "tok")
    finally:
        await session.close()
        await runner.cleanup()
    assert answer.status == 302
    assert hits == ["DELETE /v1/customer-orders/ABC0000000001"]
    table = OutcomeTable.load(None)
    assert table.classify(302, None, None).action is Action.RETRY


@pytest.fixture
async def stalling() -> AsyncIterator[tuple[str, asyncio.Event]]:
    """A server that never answers a DELETE of an ID starting SLO (and answers the others at
    once); the event is set when such a DELETE has arrived."""
    from aiohttp import web  # noqa: PLC0415

    arrived, ended = asyncio.Event(), asyncio.Event()

    async def answer(request: web.Request) -> web.Response:
        if request.path.rsplit("/", 1)[-1].startswith("SLO"):
            arrived.set()
            await ended.wait()  # never answered while the test runs
        return web.Response(status=200)

    runner, base = await _serve(answer)
    yield base, arrived
    ended.set()
    await runner.cleanup()


async def _serve(handler: Any) -> tuple[Any, str]:
    """A server answering every request with ``handler`` on a loopback port; (its runner, to
    clean up, and the base URL a client is given)."""
    from aiohttp import web  # noqa: PLC0415

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}/v1"


async def test_a_request_times_out_alone(stalling: tuple[str, asyncio.Event]) -> None:
    """One timer for every request in flight: the unanswered request ends `timeout` after its
    timeout, the others answered meanwhile are untouched, and the task it ran in goes on (its
    next request is answered): the timeout's cancellation is taken back."""
    base, _ = stalling
    session = new_session(4)
    try:
        client = MouvoneClient(session, base, "key", timeout_s=0.3)

        async def stalled_then_fine() -> tuple[Answer, Answer, int]:
            first = await client.cancel("SLO0000000001", "tok")
            second = await client.cancel("ABC0000000002", "tok")
            task = asyncio.current_task()
            assert task is not None
            return first, second, task.cancelling()

        (late, after, cancelling), *others = await asyncio.gather(
            stalled_then_fine(), *(client.cancel(f"ABC000000010{i}", "tok") for i in range(5))
        )
    finally:
        await session.close()
    assert (late.status, late.failure) == (None, "timeout")
    assert 300 <= late.latency_ms < 3000, late.latency_ms
    assert (after.status, cancelling) == (200, 0)
    assert [a.status for a in others] == [200] * 5


async def test_a_stop_during_a_request_is_not_a_timeout(
    stalling: tuple[str, asyncio.Event],
) -> None:
    """A request whose task is cancelled (the run stops) raises the cancellation, as before:
    only the timeout's own cancellation becomes an answer."""
    base, arrived = stalling
    session = new_session(4)
    try:
        client = MouvoneClient(session, base, "key", timeout_s=30)
        task = asyncio.create_task(client.cancel("SLO0000000001", "tok"))
        await arrived.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    finally:
        await session.close()
