"""`cancel-orders control` on a running run: the run polls its channel (its ledger, or the
consumer group's hash in Redis) twice a second, obeys what changed (pause, resume, rate, stop),
and publishes its status there for `control status`.

A channel that fails (the ledger busy, Redis away) is logged and polled again: steering never
stops a run by itself."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Protocol

import structlog

from worker.api.limiter import RateLimiter
from worker.domain.errors import WorkerError
from worker.pipeline.control import RunControl
from worker.runtime.clock import Clock, SystemClock

log = structlog.get_logger(__name__)

POLL_S = 0.5  # a command takes effect within this (and the requests in flight)
ACTIONS = ("pause", "resume", "stop", "rate", "status")


class ControlChannel(Protocol):
    """Where a run hears `control` and tells its status."""

    async def commands(self) -> dict[str, str]:
        """The standing commands: ``paused`` ("1"/"0"), ``rate``, ``stop`` ("1")."""

    async def publish(self, status: dict[str, Any]) -> None:
        """This run's status, for `control status`."""


class Steering:
    """Obeys a channel: once before the run reads or sends anything (a group stopped or paused
    stays so for a consumer that starts meanwhile), then twice a second."""

    def __init__(
        self,
        channel: ControlChannel,
        limiter: RateLimiter,
        control: RunControl,
        status: Callable[[], dict[str, Any]],
        ceiling: float = math.inf,
        clock: Clock | None = None,
    ) -> None:
        self._clock = clock or SystemClock()
        self._channel = channel
        self._limiter = limiter
        self._control = control
        self._status = status
        self._ceiling = ceiling  # the highest rate `control rate` may set (--max-rate)
        self._applied: dict[str, str] = {}

    async def step(self) -> None:
        """Apply what changed, publish the status; a channel that fails is only logged."""
        try:
            wanted = await self._channel.commands()
            for key in ("paused", "rate", "stop"):
                value = wanted.get(key, "")
                if value != self._applied.get(key, ""):
                    self._applied[key] = value
                    _apply(key, value, self._limiter, self._control, self._ceiling)
            await self._channel.publish({**self._status(), "paused": self._limiter.held})
        except (OSError, WorkerError, ValueError) as exc:
            log.warning("control_channel_failed", error=str(exc), retry_in_s=POLL_S)
        except Exception as exc:  # noqa: BLE001 - e.g. a Redis error: never stop the run
            log.warning("control_channel_failed", error=repr(exc), retry_in_s=POLL_S)

    async def run(self) -> None:
        """Step every POLL_S until cancelled."""
        while True:
            await self._clock.sleep(POLL_S)
            await self.step()


def _apply(key: str, value: str, limiter: RateLimiter, control: RunControl, ceiling: float) -> None:
    if key == "paused":
        if value == "1" and not limiter.held:
            limiter.hold()
            log.warning("run_paused", detail="by `cancel-orders control pause`; in-flight finish")
        elif value != "1" and limiter.held:
            limiter.resume()
            log.warning("run_resumed", detail="by `cancel-orders control resume`")
    elif key == "rate" and value:
        rate = _rate(value, ceiling)
        if rate is not None and rate != limiter.rate_per_s:
            limiter.set_rate(rate)
    elif key == "stop" and value == "1":
        control.stop_by_limit("stopped by `cancel-orders control stop`")


def _rate(value: str, ceiling: float) -> float | None:
    """A rate written by `control rate` (or by anyone who can write the channel), as the run
    takes it: up to its ceiling; None, with a warning, when it is no finite positive number."""
    try:
        rate = float(value)
    except ValueError:
        rate = math.nan
    if not math.isfinite(rate) or rate <= 0:
        log.warning("control_rate_ignored", value=value[:50], detail="not a finite rate above 0")
        return None
    if rate > ceiling:
        log.warning(
            "control_rate_capped",
            asked=rate,
            rate=ceiling,
            detail="the ceiling is --max-rate (else the run's --rate)",
        )
        return ceiling
    return rate
