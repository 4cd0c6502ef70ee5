"""The rate limiter: even spacing, first come first served, a shared pause; on a virtual clock."""

from __future__ import annotations

import asyncio
import itertools
from datetime import UTC, datetime

import pytest

from tests.fakes import FakeClock
from tests.support import max_in_window
from worker.api.headers import limit_per_s
from worker.api.limiter import LEARNED_SHARE, RateLimiter
from worker.ledger.base import busiest_clean_second


async def _admit(limiter: RateLimiter, clock: FakeClock, n: int) -> list[tuple[int, float]]:
    admitted: list[tuple[int, float]] = []

    async def one(i: int) -> None:
        await limiter.acquire()
        admitted.append((i, clock.monotonic()))

    tasks = [asyncio.create_task(one(i)) for i in range(n)]
    await clock.run(*tasks)
    return admitted


async def test_even_spacing_no_burst() -> None:
    """At rate 10 the first ten requests are spread over a second, not sent at once."""
    clock = FakeClock()
    limiter = RateLimiter(10, clock, margin=1.0, hard_cap=False)
    admitted = await _admit(limiter, clock, 10)
    times = [t - 1000.0 for _, t in admitted]
    assert times == pytest.approx([i * 0.1 for i in range(10)])


@pytest.mark.parametrize("rate", [1, 7, 10, 300])
async def test_never_more_than_rate_in_any_second(rate: float) -> None:
    """With the default margin, no sliding second holds more than `rate` admissions."""
    clock = FakeClock()
    limiter = RateLimiter(rate, clock, hard_cap=False)
    admitted = await _admit(limiter, clock, int(rate * 3) + 5)
    assert max_in_window([t for _, t in admitted]) <= rate
    # ...and it still achieves at least 97% of the rate.
    span = admitted[-1][1] - admitted[0][1]
    assert (len(admitted) - 1) / span >= 0.97 * rate


async def test_first_come_first_served() -> None:
    """Callers are admitted in the order they asked."""
    clock = FakeClock()
    limiter = RateLimiter(50, clock, hard_cap=False)
    admitted = await _admit(limiter, clock, 40)
    assert [i for i, _ in admitted] == list(range(40))


@pytest.mark.parametrize("hold", ["pause", "brake"])
async def test_a_pause_or_a_brake_holds_everyone(hold: str) -> None:
    """A pause (a 429's Retry-After) or a brake (the ledger has not taken the results) stops
    every admission until it ends, waiters included, and a shorter one does not end it early;
    only the pause counts as the gateway's."""
    clock = FakeClock()
    limiter = RateLimiter(10, clock, margin=1.0, hard_cap=False)
    await _admit(limiter, clock, 1)
    start = clock.monotonic()
    tasks = [asyncio.create_task(limiter.acquire()) for _ in range(5)]
    for _ in range(5):
        await asyncio.sleep(0)
    getattr(limiter, hold)(3.0)
    getattr(limiter, hold)(1.0)
    times: list[float] = []

    async def watch(task: asyncio.Task[float]) -> None:
        await task
        times.append(clock.monotonic())

    await clock.run(*[asyncio.create_task(watch(t)) for t in tasks])
    assert min(times) >= start + 3.0
    assert max_in_window(times) <= 10
    assert limiter.paused_total_s == pytest.approx(3.0 if hold == "pause" else 0.0)


async def test_pause_never_shortens() -> None:
    """A shorter pause arriving during a longer one does not end it early."""
    clock = FakeClock()
    limiter = RateLimiter(10, clock, hard_cap=False)
    limiter.pause(5.0)
    limiter.pause(1.0)
    assert limiter.paused_until == pytest.approx(clock.monotonic() + 5.0)


def test_rate_must_be_positive() -> None:
    """A zero rate is a programming error."""
    with pytest.raises(ValueError):
        RateLimiter(0, FakeClock())


def test_429_halves_the_pace_once_a_second() -> None:
    """A burst of 429s halves the pace once; a later one halves it again."""
    clock = FakeClock()
    limiter = RateLimiter(100, clock)
    for _ in range(10):
        limiter.slow_down()
    assert limiter.pace_per_s == 50
    clock.now += 1.0
    limiter.slow_down()
    assert limiter.pace_per_s == 25
    assert limiter.lowest_pace_per_s == 25


def test_a_lowered_pace_climbs_back_to_the_busiest_clean_second_and_no_higher() -> None:
    """The gateway answered 80 requests in a second without a 429, then a 429 halved the pace:
    after the hold it climbs a step every half second, back to 80 and not past it (a limit
    that was real is not crossed again); only after ten quiet minutes does it go on to the
    rate, never above it."""
    clock = FakeClock()
    limiter = RateLimiter(100, clock)
    limiter.admitted.extend(clock.now - 1.49 + i / 80 for i in range(80))  # 80 in one second
    limiter.speed_up()  # counts that second: no 429 in it
    assert limiter.clean_best == 80
    clock.now += 1.0
    limiter.slow_down()
    assert limiter.pace_per_s == 50
    climbed = []
    for _ in range(40):  # 20 s of successes, a look every half second
        clock.now += 0.5
        limiter.speed_up()
        climbed.append(limiter.pace_per_s)
    assert climbed[1] == 50  # held for HOLD_S after the 429
    assert climbed[3] > 50
    assert max(climbed) == 80
    assert climbed.index(80) <= 12  # back within about six seconds
    clock.now += 601
    for _ in range(20):
        clock.now += 0.5
        limiter.speed_up()
    assert limiter.pace_per_s == 100


async def test_a_lowered_pace_spaces_requests_wider() -> None:
    """After a 429 the slots are twice as far apart."""
    clock = FakeClock()
    limiter = RateLimiter(10, clock, hard_cap=False)
    limiter.slow_down()
    starts: list[float] = []

    async def take() -> None:
        await limiter.acquire()
        starts.append(clock.now)

    await clock.run(*(asyncio.ensure_future(take()) for _ in range(3)))
    gaps = [round(b - a, 3) for a, b in itertools.pairwise(starts)]
    assert gaps == [round(1 / (5 * 0.98), 3)] * 2


async def test_callers_that_missed_their_slots_in_a_stall_go_evenly_spaced() -> None:
    """Sixteen callers wait for their slots at rate 10; the process stalls for 3 s (frozen,
    swapped out) and they all wake at once: they take new slots from then on, evenly spaced,
    instead of leaving together."""
    clock = FakeClock()
    limiter = RateLimiter(10, clock, margin=1.0, hard_cap=False)
    admitted: list[float] = []

    async def one() -> None:
        await limiter.acquire()
        admitted.append(clock.monotonic())

    tasks = [asyncio.create_task(one()) for _ in range(16)]
    for _ in range(5):
        await asyncio.sleep(0)  # every caller has its slot and sleeps for it
    first = list(admitted)
    clock.now += 3.0  # the stall: every slot but the first is now in the past
    await clock.run(*tasks)
    woken = sorted(admitted[len(first) :])
    assert len(first) == 1
    assert woken[0] >= 1003.0
    assert min(b - a for a, b in itertools.pairwise(woken)) >= 0.1 - 1e-9
    assert max_in_window([*first, *woken]) <= 10


async def _behind_a_gateway(
    rate: float, limit: int, orders: int, neighbour: tuple[float, float, float] | None = None
) -> tuple[list, list]:
    """16 workers sending ``orders`` through a limiter at ``rate`` to a gateway that admits
    ``limit`` requests in any sliding second (50 ms latency, 429 with Retry-After: 1, refused
    orders sent again), shared with ``neighbour`` (another client sending (per second, from,
    until) seconds after the start); (arrival times with True when admitted, the limiter)."""
    clock = FakeClock()
    limiter = RateLimiter(rate, clock, hard_cap=False)
    admitted: list[float] = []
    arrivals: list[tuple[float, bool]] = []
    left = [orders]
    start = clock.now

    async def other() -> None:
        assert neighbour is not None
        per_s, begins, ends = neighbour
        await clock.sleep(begins)
        while clock.now < start + ends:
            if sum(1 for t in admitted if t > clock.now - 1.0) < limit:
                admitted.append(clock.now)
            await clock.sleep(1 / per_s)

    async def worker() -> None:
        while left[0] > 0:
            left[0] -= 1
            while True:
                slot = await limiter.acquire()
                await clock.sleep(0.025)
                now = clock.now
                ok = sum(1 for t in admitted if t > now - 1.0) < limit
                arrivals.append((now, ok))
                if ok:
                    admitted.append(now)
                await clock.sleep(0.025)
                if ok:
                    limiter.admitted.append(slot)
                    limiter.speed_up()
                    break
                limiter.slow_down(slot)
                limiter.pause(1.0)

    tasks = [asyncio.ensure_future(worker()) for _ in range(16)]
    if neighbour is not None:
        tasks.append(asyncio.ensure_future(other()))
    await clock.run(*tasks)
    return arrivals, [limiter]


@pytest.mark.parametrize("factor", [1.2, 2.0, 5.0])
async def test_an_unknown_gateway_limit_is_learned_where_the_429s_begin(factor: float) -> None:
    """--rate at 1.2x, 2x and 5x a 50/s sliding-window limit nobody told the tool: over a
    minute at least 0.95 of the limit is used (the first 429's Retry-After pause included),
    fewer than 2% of requests are refused, and once the first 429 came no sliding second
    carries more than the limit."""
    arrivals, (limiter,) = await _behind_a_gateway(50 * factor, 50, 3000)
    first = min(t for t, ok in arrivals if not ok)
    after = [t for t, _ in arrivals if t >= first]
    assert max_in_window(after) <= 50
    refused = sum(1 for _, ok in arrivals if not ok)
    assert refused / len(arrivals) < 0.02
    done = [t for t, ok in arrivals if ok]
    assert (len(done) - 1) / (done[-1] - done[0]) >= 0.95 * 50
    assert limiter.learned_per_s is not None
    assert 47 <= limiter.learned_per_s <= 50


async def test_the_pace_climbs_back_when_a_neighbour_leaves() -> None:
    """A run at --rate 100 against a 100/s gateway limit; another client takes 50/s of it from
    10 s to 20 s, then leaves: the run drops to what is left, and is back at 0.9 of the limit
    or more within 10 s of the neighbour leaving, with under 2% of its requests refused."""
    arrivals, (limiter,) = await _behind_a_gateway(100, 100, 4000, neighbour=(50, 10, 20))
    start = min(t for t, _ in arrivals)
    done = [t - start for t, ok in arrivals if ok]
    during = sum(1 for t in done if 12 <= t < 20) / 8
    assert during <= 55  # it made room
    after = sum(1 for t in done if 30 <= t < 35) / 5
    assert after >= 90, after
    refused = sum(1 for _, ok in arrivals if not ok)
    assert refused / len(arrivals) < 0.02
    assert limiter.pace_per_s <= 100


def test_the_gateway_s_own_limit_is_taken_when_it_says_it() -> None:
    """A 429 carrying the gateway's limit sets the pace just under it at once; one soon after
    lowers it a little (not by half); after ten quiet minutes it climbs again."""
    clock = FakeClock()
    limiter = RateLimiter(100, clock)
    limiter.clean_best = 90  # it took more before: the gateway's word still wins
    limiter.slow_down(clock.now, 20.0)
    assert limiter.learned_per_s == 20
    assert limiter.pace_per_s == pytest.approx(20 * LEARNED_SHARE)
    for _ in range(100):
        clock.now += 0.04
        limiter.speed_up()  # no climbing back past the gateway's word
    assert limiter.pace_per_s == pytest.approx(20 * LEARNED_SHARE)
    clock.now += 5
    limiter.slow_down(clock.now)  # a 429 soon after: the limit is a little lower
    assert limiter.pace_per_s == pytest.approx(20 * 0.97 * LEARNED_SHARE)
    clock.now += 601
    limiter.speed_up()  # ten quiet minutes: it climbs again, to find a limit raised
    assert limiter.pace_per_s > 20 * 0.97 * LEARNED_SHARE


def test_rate_limit_headers() -> None:
    """RateLimit-Policy (quota;w=window), else RateLimit-Limit / X-RateLimit-Limit per second."""
    assert limit_per_s({"RateLimit-Policy": "100;w=10"}) == 10
    assert limit_per_s({"RateLimit-Policy": "50;w=1, 1000;w=3600"}) == 50
    assert limit_per_s({"X-RateLimit-Limit": "30"}) == 30
    assert limit_per_s({"RateLimit-Limit": "nan"}) is None
    assert limit_per_s({}) is None


def test_the_busiest_clean_second_leaves_out_seconds_with_a_429() -> None:
    """The ledger's memory of what the gateway took: the most requests answered (not 429) in
    one second that holds no 429; sends older than the cut-off and unanswered ones are not
    counted."""
    base = datetime(2026, 1, 1, tzinfo=UTC).timestamp()

    def at(offset: float) -> float:
        return base + offset

    sends = [(at(i / 50), 200) for i in range(50)]  # 50 in the first second
    sends += [(at(2 + i / 80), 200) for i in range(80)] + [(at(2.5), 429)]  # 80, one refused
    sends += [(at(5 + i / 30), 200) for i in range(30)] + [(at(5.5), None)]
    sends += [(at(-100 + i / 200), 200) for i in range(200)]  # before the cut-off
    assert busiest_clean_second(sends, base - 10) == 50
    assert busiest_clean_second([], base) == 0


def test_a_replica_that_learns_nothing_creeps_back_to_the_rate_and_no_higher() -> None:
    """A consumer group's replica (its requests are a share of the group's, so its 429s teach
    no limit): a 429 halves its pace, and successes raise it by about 2% of the rate per second
    of them, capped at the rate."""
    clock = FakeClock()
    limiter = RateLimiter(100, clock)
    limiter.learns = False
    limiter.clean_best = 80  # what it saw says nothing of the group: still halved
    limiter.slow_down()
    assert limiter.pace_per_s == 50
    for _ in range(50):  # one second of successes at 50/s
        limiter.speed_up()
    assert 51.5 < limiter.pace_per_s < 52.5
    for _ in range(10_000):
        limiter.speed_up()
    assert limiter.pace_per_s == 100
