"""Backoff: exponential, full jitter, capped, never below Retry-After; Retry-After parsing."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from worker.domain.retry import Backoff, parse_retry_after


@pytest.mark.parametrize(
    ("attempt", "rand", "expected"),
    [(1, 1.0, 0.5), (2, 1.0, 1.0), (3, 1.0, 2.0), (4, 0.5, 2.0), (10, 1.0, 30.0), (1, 0.0, 0.0)],
)
def test_full_jitter(attempt: int, rand: float, expected: float) -> None:
    """delay = rand * min(cap, base * 2^(attempt-1))."""
    assert Backoff(0.5, 30.0, lambda: rand).delay(attempt) == pytest.approx(expected)


def test_retry_after_is_a_floor() -> None:
    """A Retry-After longer than the jittered delay wins; a shorter one does not shorten it."""
    backoff = Backoff(0.5, 30.0, lambda: 1.0)
    assert backoff.delay(1, retry_after_s=7) == 7
    assert backoff.delay(4, retry_after_s=1) == 4.0


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("5", 5.0),
        (" 2 ", 2.0),
        ("0", 0.0),
        ("-3", 0.0),
        ("1.5", 1.5),
        ("", None),
        (None, None),
        ("soon", None),
        ("nan", None),
        ("inf", None),
        ("Thu, 26 Nov 2026 12:00:30 GMT", 30.0),
        ("Thu, 26 Nov 2026 11:59:00 GMT", 0.0),
    ],
)
def test_parse_retry_after(header: str | None, expected: float | None) -> None:
    """Delta-seconds or an HTTP date; garbage is ignored rather than trusted."""
    now = datetime(2026, 11, 26, 12, 0, 0, tzinfo=UTC)
    assert parse_retry_after(header, now) == expected
