"""One process-wide rate limit: even spacing, a hard cap, and a shared pause.

asyncio-throttle's ``Throttler`` keeps a sliding log of start times and so never lets more than
``floor(rate)`` requests start within any window of CAP_PERIOD_S (a little over a second, so
that a request arriving a few milliseconds late cannot push a second over): it is the hard cap,
and it holds whatever happens to the schedule, a stall of the event loop included (a frozen or
swapped process wakes with every slot it missed due at once; ``acquire`` then spaces those
callers again). On its own
it admits a whole second's quota in a burst at the start of the window, which Azure API
Management's sliding window answers with 429s, and its waiters poll every ``retry_interval``.
So requests are first paced onto evenly spaced slots (``1 / (rate * margin)`` apart, first come
first served, no polling), and then pass the throttler, which in steady state never has to wait.

A 429 or a quota answer pauses every caller: no slot is handed out before the pause ends. A 429
also lowers the pace (at most once a second: the answers of one burst are one signal) to the
gateway's limit, learned where the 429s begin: the gateway's own figure when the answer carries
one (``RateLimit-Policy``, ``X-RateLimit-Limit``), else the requests the gateway admitted in
the second before the refused one (counted again with the burst's later answers). The pace is
then set at that limit (the margin keeps it 2% under; a 429 within RELEARN_S lowers the limit
by 3%; with nothing to learn from, the pace is halved, or lowered by a tenth at a pace the
gateway answered before without a 429: a lone 429 there is a neighbour's burst).

A limit learned from 429s may be another client's doing (a second team on the subscription, a
neighbour's retry storm, a killed run's last second), gone a few seconds later; so the pace
climbs back. After HOLD_S without a 429 it rises by STEP_UP every STEP_S, up to the busiest
second the gateway has answered without a 429 (``clean_best``: in this run, or in the ledger's
attempts of the last hour, so that a resumed run starts with what the one before it saw), never
over it (nor past a limit the gateway stated in its answer): what the gateway took before it
takes again, and a limit that is real is not crossed again by the climb. A 429 soon after a
climb step means the neighbour is still there: the next climb waits twice as long (up to
MAX_HOLD_S), and when climbs keep failing at the longest wait (STALE_AFTER times, about a
minute), that busiest second is forgotten as stale. Only after QUIET_S without a 429 does the
pace climb past it, to find a limit that was raised. A consumer group's replica learns nothing
from its own requests (they are a share of the group's): its pace, halved by a 429, creeps back
by INCREASE_PER_S of the rate per second of successes. The pace never goes above the configured
rate, and the hard cap never moves.
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from collections.abc import Callable

import structlog
from asyncio_throttle.throttler import Throttler

from worker.runtime.clock import Clock

log = structlog.get_logger(__name__)


def _ignore(_seconds: float) -> None:
    """No one is counting."""


DEFAULT_MARGIN = 0.98  # pace a little under the limit: the gateway's window is not exact
CAP_PERIOD_S = 1.02  # the hard cap's window: floor(rate) requests in any 1.02 s, so no second
# carries more than the rate even when the requests catching up after a stall arrive 20 ms apart
# from the ones before it
STALL_S = 0.2  # a slot reached this late belongs to a stall (see acquire)
MIN_SLEEP_S = 0.001  # a slot closer than this is taken at once: an event-loop timer costs more
DECREASE_FACTOR = 0.5  # a 429 that teaches nothing halves the pace...
KNOWN_DECREASE = 0.9  # ... or lowers it by a tenth at a pace the gateway took before
LEARNED_SHARE = 1.0  # the pace once a limit is learned: 2% under it with the margin (jitter room)
RELEARN_S = 10.0  # a 429 this soon after a limit was learned: the limit is a little lower
STEP_DOWN = 0.97  # ... by this much
QUIET_S = 600.0  # without a 429 this long, the pace may climb past the busiest clean second
WINDOW_S = 1.0  # the gateway's window the limit is counted in
ADMITTED_KEPT = 65_536  # admitted slots kept: the limit is counted among the last second's
RECOUNT_AFTER_S = 0.5  # the answers admitted before the teaching 429 have all come by then
MIN_SHARE = 0.01  # the pace never falls under this share of the rate
INCREASE_PER_S = 0.02  # a group replica's pace creeps back by this share of the rate per second
HOLD_S = 1.5  # after a 429, the pace holds this long before it climbs back...
MAX_HOLD_S = 6.0  # ... twice as long after each climb a 429 cut short, up to this
STEP_S = 0.5  # a climbing pace rises once per this (and the clean seconds are counted)...
STEP_UP = 1.2  # ... by this factor
FAILED_CLIMB_S = 5.0  # a 429 this soon after a climb step: the climb found the limit
STALE_AFTER = 8  # climbs failed in a row at the longest hold before clean_best is forgotten
ANSWERED_IN_S = 0.5  # the answers to a second's requests have all come this long after it
ADMITTED_SLACK = 4096  # admitted slots looked at past the counted second (answers reorder)


class RateLimiter:
    """Admit requests at most ``rate_per_s`` per second, evenly spaced."""

    def __init__(
        self,
        rate_per_s: float,
        clock: Clock,
        *,
        margin: float = DEFAULT_MARGIN,
        hard_cap: bool = True,
    ) -> None:
        if rate_per_s <= 0:
            raise ValueError("rate_per_s must be positive")
        self._clock = clock
        self.rate_per_s = rate_per_s
        self._margin = margin
        self.pace_per_s = rate_per_s  # the current pace, lowered by 429s
        self.lowest_pace_per_s = rate_per_s
        self._lowered_at: float | None = None
        self._interval_s = 1.0 / (rate_per_s * margin)
        self._next_slot = 0.0
        self._paused_until = 0.0
        self.paused_total_s = 0.0
        self.braked_until = 0.0  # no slot before then: the ledger has not taken the results
        self._throttler: Throttler | None = None
        self.on_wait: Callable[[float], None] = _ignore  # time spent waiting for a slot
        self._hard_cap = hard_cap
        self.held = False  # `control pause`: no slot is handed out until resumed
        self._resumed = asyncio.Event()
        self.learns = True  # learns the gateway's limit from its 429s (one process's requests)
        self.learned_per_s: float | None = None  # the gateway limit learned, if any
        self._learned_at: float | None = None
        # the slots of the latest admitted requests (any answer but 429), appended by the caller
        # without a method call: it happens for every request
        self.admitted: deque[float] = deque(maxlen=ADMITTED_KEPT)
        self._teacher: float | None = None  # the slot of the 429 that taught the limit
        self._hold_s = HOLD_S  # how long a lowered pace holds before climbing back
        self._climb_after = 0.0  # the pace holds until then
        self._next_look = 0.0  # when the pace may next rise, and the clean second be counted
        self._stepped_at: float | None = None  # when it last rose
        self._last_429 = -math.inf  # when the last 429 came
        self.clean_best = 0.0  # the busiest second answered without a 429 (requests)
        self._failed_climbs = 0  # climbs a 429 cut short at the longest hold, in a row
        self._make_cap()

    def _make_cap(self) -> None:
        if self._hard_cap:
            # At least a second per window: floor(rate) in any CAP_PERIOD_S, or one request in
            # 1 / rate seconds (and a little) below one per second.
            rate = self.rate_per_s
            self._throttler = Throttler(
                rate_limit=max(1, math.floor(rate)),
                period=max(CAP_PERIOD_S, CAP_PERIOD_S / rate),
                retry_interval=min(0.01, self._interval_s / 2),
            )

    def hold(self) -> None:
        """`control pause`: hand out no slot (requests in flight finish) until ``resume``."""
        self.held = True
        self._resumed.clear()

    def resume(self) -> None:
        """`control resume`: hand out slots again, evenly spaced from now."""
        self.held = False
        self._next_slot = max(self._next_slot, self._clock.monotonic())
        self._resumed.set()

    def set_rate(self, rate_per_s: float) -> None:
        """`control rate R`: the rate, the pace and the hard cap for the rest of the run."""
        self.rate_per_s = self.pace_per_s = self.lowest_pace_per_s = rate_per_s
        self._set_pace(rate_per_s)
        self._make_cap()
        log.warning("rate_changed", rate=rate_per_s)

    async def until_resumed(self) -> None:
        """Wait while held (at once when not)."""
        while self.held:
            await self._resumed.wait()

    async def acquire(self) -> float:
        """Wait for this caller's slot, then take it; the (monotonic) time it was due.

        A slot reached more than STALL_S late (the process was frozen or swapped out, and every
        waiting caller wakes at once) is given up once for a new one from now: the callers that
        missed their slots go evenly spaced again instead of in one burst up to the hard cap."""
        retaken = False
        while True:
            if self.held:
                await self.until_resumed()
            now = self._clock.monotonic()
            slot = max(now, self._next_slot)
            self._next_slot = slot + self._interval_s
            if slot - now < MIN_SLEEP_S:
                break  # slots stay on their schedule, so starting early never adds up
            self.on_wait(slot - now)
            await self._clock.sleep(slot - now)
            now = self._clock.monotonic()
            if now < self._paused_until or now < self.braked_until or self.held:
                continue  # a pause, a brake or a hold began while this caller waited: behind it
            if now - slot > STALL_S and not retaken:
                retaken = True
                continue
            break
        if self._throttler is not None:
            await self._throttler.acquire()  # type: ignore[no-untyped-call]
        if self._teacher is not None:
            self._recount_late(slot)
        return slot

    def _recount_late(self, now: float) -> None:
        """Once the answers sent before the 429 that taught the limit have all come (some
        arrive after it), count them again: the limit is the higher count."""
        teacher = self._teacher
        if teacher is not None and now - teacher >= RECOUNT_AFTER_S:
            self._recount(teacher)
            self._teacher = None

    def late(self, due: float) -> bool:  # noqa: ARG002 - the group limiter's signature
        """True when a slot due at ``due`` must be taken again before sending. Never here: the
        hard cap holds a process to the rate whatever its delays."""
        return False

    def pause(self, seconds: float) -> None:
        """Hand out no slot for ``seconds`` from now (a pause never shortens an earlier one)."""
        until = self._clock.monotonic() + max(0.0, seconds)
        if until > self._paused_until:
            self.paused_total_s += until - max(self._paused_until, self._clock.monotonic())
            self._paused_until = until
        self._next_slot = max(self._next_slot, self._paused_until)

    def brake(self, seconds: float) -> None:
        """Hand out no slot for ``seconds`` from now: the run's results wait on its ledger (a
        wait of the tool's, not the gateway's: not counted as paused)."""
        self.braked_until = max(self.braked_until, self._clock.monotonic() + seconds)
        self._next_slot = max(self._next_slot, self.braked_until)

    def slow_down(self, slot: float | None = None, hint_per_s: float | None = None) -> None:
        """A 429 to the request sent in ``slot`` (its limiter slot), the gateway's own limit in
        ``hint_per_s`` when it said: set the pace under the limit learned (a little lower at a
        429 soon after), or halve it when nothing can be learned; once a second at most."""
        now = self._clock.monotonic()
        self._last_429 = now
        if self._lowered_at is not None and now - self._lowered_at < 1.0:
            self._recount(slot)
            return
        self._lowered_at = now
        if self._stepped_at is not None and now - self._stepped_at < FAILED_CLIMB_S:
            if self._hold_s >= MAX_HOLD_S:
                self._failed_climbs += 1
                if self._failed_climbs >= STALE_AFTER:  # for a minute: that second is past
                    self.clean_best = min(self.clean_best, self.pace_per_s)
            self._hold_s = min(MAX_HOLD_S, self._hold_s * 2)  # the neighbour is still there
        self._climb_after = now + self._hold_s
        learned = self._learn(slot, hint_per_s, now)
        self._teacher = slot if learned is not None and hint_per_s is None else None
        if learned is not None:
            if hint_per_s is not None:  # the gateway's own word: no climbing back past it
                self.clean_best = min(self.clean_best, learned)
            self.learned_per_s = learned
            self._learned_at = now
            self._set_pace(min(self.rate_per_s, learned * LEARNED_SHARE))
            log.warning("rate_limit_learned", limit_per_s=round(learned, 2), rate=self.rate_per_s)
        else:
            floor = self.rate_per_s * MIN_SHARE
            # at a pace the gateway took before without a 429, a lone 429 is someone else's
            # burst (or one order's): a small step down, not half
            known = self.learns and self.pace_per_s <= self.clean_best
            self._set_pace(
                max(floor, self.pace_per_s * (KNOWN_DECREASE if known else DECREASE_FACTOR))
            )
            log.warning("rate_lowered", pace_per_s=round(self.pace_per_s, 2), rate=self.rate_per_s)
        self.lowest_pace_per_s = min(self.lowest_pace_per_s, self.pace_per_s)

    def _recount(self, slot: float | None) -> None:
        """Another 429 of the burst that taught a limit: the requests admitted before it are
        counted again (answers of the first ones may have come after the first 429's), and the
        limit raised to the higher count."""
        if slot is None or self._learned_at != self._lowered_at or self.learned_per_s is None:
            return
        counted = self._admitted_before(slot)
        if counted > self.learned_per_s:
            self.learned_per_s = counted
            self._set_pace(min(self.rate_per_s, counted * LEARNED_SHARE))

    def _admitted_before(self, slot: float) -> float:
        """Requests admitted in the second before ``slot``, per second (the newest slots are
        at the right, give or take the order their answers came in)."""
        counted = 0
        for seen, t in enumerate(reversed(self.admitted)):
            if slot - WINDOW_S < t < slot:
                counted += 1
            elif t <= slot - WINDOW_S and seen > counted + ADMITTED_SLACK:
                break  # well past the second: the rest are older still
        return counted / WINDOW_S

    def _learn(self, slot: float | None, hint_per_s: float | None, now: float) -> float | None:
        """The gateway's limit per second: its own word, else the requests it admitted in the
        second before the one it refused; a little lower than the last one learned when it
        refuses again soon after; None when it cannot be told (then the pace is halved)."""
        if not self.learns:
            return None
        if hint_per_s is not None and hint_per_s > 0:
            return hint_per_s
        last = self.learned_per_s
        if last is not None and self._learned_at is not None and now - self._learned_at < RELEARN_S:
            return last * STEP_DOWN
        if slot is None:
            return None
        accepted = self._admitted_before(slot)
        if accepted < 2 or accepted * LEARNED_SHARE >= self.pace_per_s:
            return None  # sent no faster than the pace already: not the limit
        return accepted

    def speed_up(self) -> None:
        """A success. At most once per STEP_S: count the last answered second if no 429 came
        in it, and, once a lowered pace has held long enough, climb one step toward the
        busiest such second (toward the configured rate once QUIET_S passed without a 429)."""
        if not self.learns:  # a group's replica: its own requests say nothing of the group's
            self._creep_up()
            return
        now = self._clock.monotonic()
        if now < self._next_look:
            return
        self._next_look = now + STEP_S
        if now - self._last_429 > WINDOW_S + ANSWERED_IN_S:
            self.clean_best = max(self.clean_best, self._admitted_before(now - ANSWERED_IN_S))
        pace = self.pace_per_s
        if pace >= self.rate_per_s or now < self._climb_after:
            return
        quiet = now - self._last_429 >= QUIET_S
        ceiling = self.rate_per_s if quiet else min(self.rate_per_s, self.clean_best)
        if pace >= ceiling:
            self._hold_s, self._failed_climbs = HOLD_S, 0  # climbed back: the way is clear
            return
        self._stepped_at = now
        self._set_pace(min(ceiling, pace * STEP_UP))
        if self.pace_per_s >= self.rate_per_s:
            self._hold_s = HOLD_S
            log.info("rate_restored", pace_per_s=self.pace_per_s)

    def _creep_up(self) -> None:
        """A success where nothing was learned: raise the pace by a small step (INCREASE_PER_S
        of the rate per second of successes), never above the configured rate."""
        if self.pace_per_s >= self.rate_per_s:
            return
        step = self.rate_per_s * INCREASE_PER_S / self.pace_per_s
        self._set_pace(min(self.rate_per_s, self.pace_per_s + step))
        if self.pace_per_s >= self.rate_per_s:
            log.info("rate_restored", pace_per_s=self.pace_per_s)

    def _set_pace(self, pace_per_s: float) -> None:
        self.pace_per_s = pace_per_s
        self._interval_s = 1.0 / (pace_per_s * self._margin)

    @property
    def paused_until(self) -> float:
        """Monotonic time the current pause ends (in the past when not paused)."""
        return self._paused_until
