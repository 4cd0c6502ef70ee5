"""The simulator's GET endpoints agree with its DELETE behaviour; its counters are right."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from worker.simulator import RunningSimulator, SimStats


@pytest.fixture
async def api(
    make_sim: Any,
) -> AsyncIterator[tuple[RunningSimulator, aiohttp.ClientSession, dict[str, str]]]:
    running = await make_sim(orders=120)
    async with aiohttp.ClientSession() as session:
        form = {
            "grant_type": "client_credentials",
            "client_id": "demo-client",
            "client_secret": "demo-secret",
        }
        async with session.post(running.token_url, data=form) as resp:
            token = (await resp.json())["access_token"]
        headers = {"Authorization": f"Bearer {token}", "Ocp-Apim-Subscription-Key": "demo-key"}
        yield running, session, headers


async def _get(api: Any, path: str) -> tuple[int, Any]:
    running, session, headers = api
    async with session.get(running.base_url + path, headers=headers) as resp:
        return resp.status, await resp.json()


async def test_get_one_follows_delete(api: Any) -> None:
    """An order shows Cancelled once the simulator has cancelled it."""
    running, session, headers = api
    status, body = await _get(api, "/customer-orders/CDE0000000001")
    assert status == 200
    assert body["type"] == "Master"
    assert body["status"] in {"Draft", "Valid"}
    async with session.delete(
        running.base_url + "/customer-orders/CDE0000000001", headers=headers
    ) as resp:
        assert resp.status == 200
    assert (await _get(api, "/customer-orders/CDE0000000001"))[1]["status"] == "Cancelled"


@pytest.mark.parametrize(
    ("order_id", "field", "value"),
    [
        ("NMO0000000001", "type", "Elementary"),
        ("SUB0000000001", "status", "Submitted"),
        ("ALR0000000001", "status", "Cancelled"),
    ],
)
async def test_get_one_matches_behaviour(api: Any, order_id: str, field: str, value: str) -> None:
    """What GET shows predicts what DELETE answers."""
    assert (await _get(api, f"/customer-orders/{order_id}"))[1][field] == value


async def test_get_one_not_found(api: Any) -> None:
    """An order DELETE calls not found is not found by GET either."""
    status, body = await _get(api, "/customer-orders/NFD0000000001")
    assert (status, body["code"]) == (400, "CUSTOMER_ORDER_NOT_FOUND")


async def test_list_pages_and_filters(api: Any) -> None:
    """The list endpoint pages (limit at most 50) and filters by status."""
    status, first = await _get(api, "/customer-orders?limit=100&offset=0")
    assert status == 200
    assert (first["total"], first["returned"], first["first"]) == (120, 50, 0)
    _, drafts = await _get(api, "/customer-orders?status=Draft&limit=50")
    assert all(o["status"] == "Draft" for o in drafts["items"])
    assert 0 < drafts["total"] < 120


@pytest.mark.parametrize(
    ("query", "code"),
    [
        ("limit=0", "LIMIT_NONPOSITIVE"),
        ("offset=-1", "OFFSET_NEGATIVE"),
        ("startDate=yesterday", "SEARCH_DATE_ERROR"),
    ],
)
async def test_list_errors(api: Any, query: str, code: str) -> None:
    """Bad search parameters answer the API's codes."""
    status, body = await _get(api, f"/customer-orders?{query}")
    assert (status, body["code"]) == (400, code)


def test_max_in_window() -> None:
    """The busiest sliding second is counted exactly."""
    stats = SimStats(arrivals=[0.0, 0.5, 0.99, 1.0, 1.2, 3.0])
    assert stats.max_in_window(1.0) == 4  # 0.5, 0.99, 1.0, 1.2 within [0.5, 1.5)
