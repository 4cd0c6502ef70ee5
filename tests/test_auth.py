"""Token provider against the simulator: caching, refresh ahead, one refresh for all, failures."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.fakes import InstantClock
from worker.api.auth import ClientCredentials, StaticToken
from worker.api.client import new_session
from worker.api.limiter import RateLimiter
from worker.domain.errors import FatalApiError
from worker.domain.retry import Backoff
from worker.simulator import RunningSimulator


@pytest.fixture
async def session() -> AsyncIterator[Any]:
    s = new_session(8)
    yield s
    await s.close()


def _provider(
    session: Any,
    running: RunningSimulator,
    clock: InstantClock,
    secret: str = "demo-secret",
    seen: list[str] | None = None,
) -> ClientCredentials:
    return ClientCredentials(
        session,
        running.token_url,
        "demo-client",
        secret,
        limiter=RateLimiter(1000, clock, hard_cap=False),
        clock=clock,
        timeout_s=5,
        max_attempts=3,
        backoff=Backoff(0.1, 1.0, lambda: 1.0),
        on_token=(seen.append if seen is not None else lambda _t: None),
    )


async def test_token_is_cached(sim: RunningSimulator, session: Any) -> None:
    """Many concurrent callers share one token request."""
    tokens = _provider(session, sim, InstantClock())
    got = await asyncio.gather(*(tokens.get() for _ in range(20)))
    assert len(set(got)) == 1
    assert sim.sim.stats.token_requests == 1


async def test_refreshed_ahead_of_expiry(make_sim: Any, session: Any) -> None:
    """A token is replaced before it expires (here 100 s: refreshed after 80 s)."""
    running = await make_sim(token_ttl_s=100)
    clock = InstantClock()
    tokens = _provider(session, running, clock)
    first = await tokens.get()
    clock.advance(70)
    assert await tokens.get() == first
    clock.advance(15)
    assert await tokens.get() != first
    assert running.sim.stats.token_requests == 2


async def test_one_refresh_for_everyone(sim: RunningSimulator, session: Any) -> None:
    """Callers that saw the same token fail share one refresh."""
    tokens = _provider(session, sim, InstantClock())
    stale = await tokens.get()
    fresh = await asyncio.gather(*(tokens.refresh(stale) for _ in range(16)))
    assert len(set(fresh)) == 1
    assert fresh[0] != stale
    assert sim.sim.stats.token_requests == 2


async def test_wrong_client_secret_is_fatal(sim: RunningSimulator, session: Any) -> None:
    """Refused client credentials stop the run, naming the settings to check."""
    tokens = _provider(session, sim, InstantClock(), secret="wrong")
    with pytest.raises(FatalApiError, match="MOUVONE_CLIENT_SECRET"):
        await tokens.get()
    assert sim.sim.stats.token_requests == 1


async def test_token_endpoint_recovers(make_sim: Any, session: Any) -> None:
    """503s from the token endpoint are retried with backoff."""
    running = await make_sim(token_failures=2)
    clock = InstantClock()
    seen: list[str] = []
    tokens = _provider(session, running, clock, seen=seen)
    token = await tokens.get()
    assert running.sim.stats.token_requests == 3
    assert [s for s in clock.slept if s >= 0.05] == [0.1, 0.2]  # pacing sleeps are ~1 ms
    assert seen == [token]  # handed to the log redactor


async def test_token_endpoint_down_is_fatal(make_sim: Any, session: Any) -> None:
    """When every attempt fails the run stops (nothing can be sent without a token)."""
    running = await make_sim(token_failures=10)
    tokens = _provider(session, running, InstantClock())
    with pytest.raises(FatalApiError, match="no access token after 3 attempts"):
        await tokens.get()


async def test_static_token_cannot_refresh() -> None:
    """A given token is used as is; a 401 with it stops the run."""
    static = StaticToken("given")
    assert await static.get() == "given"
    with pytest.raises(FatalApiError, match="MOUVONE_ACCESS_TOKEN"):
        await static.refresh("given")
