"""How hard to try one order: the attempts, the longest pause, and the backoff (exponential,
full jitter, capped, never shorter than Retry-After). Pure."""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime


@dataclass(frozen=True)
class Backoff:
    """Delay before retry number ``attempt`` (1 = the delay after the first failure)."""

    base_s: float = 0.5
    cap_s: float = 30.0
    rand: Callable[[], float] = field(default=random.random)

    def delay(self, attempt: int, retry_after_s: float | None = None) -> float:
        """Full jitter: uniform in [0, min(cap, base * 2^(attempt-1))], at least Retry-After."""
        ceiling = min(self.cap_s, self.base_s * 2 ** max(0, attempt - 1))
        jittered: float = ceiling * self.rand()
        if retry_after_s is not None:
            return max(jittered, float(retry_after_s))
        return jittered


@dataclass(frozen=True)
class RetryPolicy:
    """How hard to try one order."""

    max_attempts: int
    max_wait_s: float
    backoff: Backoff


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or HTTP-date); None if absent or bad."""
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - (now or datetime.now(UTC))).total_seconds()
    if not math.isfinite(seconds):
        return None
    return max(0.0, seconds)
