"""The circuit breaker on a virtual clock: when it opens, who probes, when it closes, and when
an outage is long enough to stop the run."""

from __future__ import annotations

import asyncio

import pytest

from tests.fakes import FakeClock
from worker.domain.answer import Answer
from worker.pipeline.breaker import CircuitBreaker, is_outage

OK = Answer(200)
DOWN = Answer(503)
RESET = Answer(None, failure="connection")


def breaker(clock: FakeClock, **kwargs: float) -> CircuitBreaker:
    """A breaker with the default thresholds and a 60 s outage timeout."""
    return CircuitBreaker(clock, outage_timeout_s=kwargs.pop("outage_timeout_s", 60.0), **kwargs)


@pytest.mark.parametrize(
    ("answer", "outage"),
    [
        (Answer(200), False),
        (Answer(400, code="CONFLICT"), False),
        (Answer(429), False),
        (Answer(500), True),
        (Answer(502), True),
        (Answer(None, failure="timeout"), True),
        (Answer(None, failure="connection"), True),
        (Answer(200, failure="unreadable"), False),
    ],
)
def test_what_counts_as_an_outage(answer: Answer, outage: bool) -> None:
    """5xx, timeouts and connection errors are outage failures; API answers are not."""
    assert is_outage(answer) is outage


async def test_scattered_failures_keep_it_closed() -> None:
    """A failure in three does not open the breaker: single orders retry on their own."""
    b = breaker(FakeClock())
    for n in range(60):
        b.record(DOWN if n % 3 == 0 else OK, probe=False)
    assert not b.is_open
    assert await b.admit() is None


async def test_opens_then_one_probe_then_closes() -> None:
    """Most recent answers failing opens it; at once exactly one caller probes, the others
    wait, and the probe's success lets everyone go."""
    clock = FakeClock()
    b = breaker(clock)
    for _ in range(10):
        b.record(RESET, probe=False)
    assert b.is_open
    admitted: list[bool | None] = []

    async def caller() -> None:
        verdict = await b.admit()
        admitted.append(verdict)
        if verdict:
            b.record(OK, probe=True)

    tasks = [asyncio.ensure_future(caller()) for _ in range(5)]
    await clock.run(*tasks)
    assert admitted.count(True) == 1
    assert admitted.count(None) == 4
    assert not b.is_open
    assert b.outage_total_s == pytest.approx(0.0)


async def test_failed_probe_doubles_the_cooldown() -> None:
    """The first probe goes at once; each that fails keeps the breaker open, for 1 s, then
    twice as long."""
    clock = FakeClock()
    b = breaker(clock)
    for _ in range(10):
        b.record(DOWN, probe=False)
    starts: list[float] = []

    async def probe_until_up() -> None:
        for answer in (DOWN, DOWN, OK):
            assert await b.admit() is True
            starts.append(clock.now)
            b.record(answer, probe=True)

    await clock.run(asyncio.ensure_future(probe_until_up()))
    assert [round(t - 1000.0, 3) for t in starts] == [0.0, 1.0, 3.0]
    assert not b.is_open


async def test_failures_in_flight_while_open_do_not_reopen_or_close() -> None:
    """Failures of requests sent before the outage was noticed leave the probe schedule alone;
    a success from one of them closes the breaker."""
    clock = FakeClock()
    b = breaker(clock)
    for _ in range(10):
        b.record(DOWN, probe=False)
    b.record(DOWN, probe=False)
    assert b.is_open
    b.record(OK, probe=False)
    assert not b.is_open


async def test_outage_longer_than_the_timeout() -> None:
    """admit answers False once the outage outlasts the outage timeout."""
    clock = FakeClock()
    b = breaker(clock, outage_timeout_s=5.0)
    for _ in range(10):
        b.record(DOWN, probe=False)

    async def keep_probing() -> bool | None:
        while (verdict := await b.admit()) is True:
            b.record(DOWN, probe=True)
        return verdict

    task = asyncio.ensure_future(keep_probing())
    await clock.run(task)
    assert task.result() is False
    assert b.outage_s() >= 5.0


async def test_released_probe_lets_another_caller_probe() -> None:
    """A probe that never got an answer (its run stopping) hands the probe to someone else."""
    clock = FakeClock()
    b = breaker(clock)
    for _ in range(10):
        b.record(DOWN, probe=False)
    first = asyncio.ensure_future(b.admit())
    await clock.run(first)
    assert first.result() is True
    second = asyncio.ensure_future(b.admit())
    await asyncio.sleep(0)
    assert not second.done()
    b.release_probe()
    await clock.run(second)
    assert second.result() is True
