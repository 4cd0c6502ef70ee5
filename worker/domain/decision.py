"""What an answer means for the order it answers: the one decision shared by the cancellations
(DELETE) and the look-ups (GET of `check`, `select` and the look-up before a resend).

Pure: no I/O and no clock. The caller says what it knows (the order's failures so far, the
limits, the breaker's view, whether the token refreshed for this order was refused) and carries
out the decision: record an outcome, retry after a delay, pause everyone, refresh the token, or
stop the run.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from worker.domain.answer import Answer
from worker.domain.classifier import Action, Verdict
from worker.domain.models import MAX_WAIT, Outcome
from worker.domain.retry import Backoff

DEFAULT_THROTTLE_PAUSE_S = 1.0  # a 429 without Retry-After still slows everyone down


class Step(StrEnum):
    """What to do next."""

    RECORD = "record"  # the order's outcome is known: ``outcome``
    RETRY = "retry"  # send again after ``delay_s``
    REAUTH = "reauth"  # refresh the token for everyone, then send again
    STOP = "stop"  # the run stops (exit 3): ``reason``; the order stays pending
    HOLD = "hold"  # wait for the breaker's verdict, then decide again


class Outage(StrEnum):
    """The circuit breaker's view of the API at the time of the answer."""

    NONE = ""
    SUSPECTED = "suspected"  # many recent orders failing: it may be about to open
    OPEN = "open"


@dataclass(frozen=True, slots=True)
class Situation:
    """What the decision needs besides the answer."""

    failures: int  # retryable failures of this order so far, counted against max_attempts
    max_attempts: int
    max_wait_s: float
    refused_after_refresh: bool = False  # the token this order's refresh produced got a 401
    quota_streak_s: float = 0.0  # since the first quota answer of the current streak
    outage: Outage = Outage.NONE
    probe: bool = False  # the answer is the breaker's probe
    held: bool = False  # this order already waited for the breaker's verdict


@dataclass(frozen=True, slots=True)
class Decision:
    """The step, and what goes with it."""

    step: Step
    outcome: Outcome | None = None  # RECORD
    counted: bool = False  # the answer spends one of the order's attempts
    delay_s: float = 0.0  # RETRY: this order waits this long first
    pause_s: float | None = None  # every caller waits this long (429, quota)
    slow_down: bool = False  # a 429: lower the pace
    reason: str = ""  # STOP


def is_outage(answer: Answer) -> bool:
    """True for the failures an outage produces: any 5xx, a timeout or a connection error."""
    if answer.status is None:
        return answer.failure in ("timeout", "connection")
    return answer.status >= 500


def decide(verdict: Verdict, answer: Answer, s: Situation, backoff: Backoff, what: str) -> Decision:
    """The decision on ``answer`` (classified as ``verdict``) for ``what`` (``order X``,
    ``GET /path``), which names the request in a reason to stop."""
    action = verdict.action
    if action is Action.FINAL:
        return Decision(Step.RECORD, verdict.outcome)
    if action is Action.REAUTH:
        if s.refused_after_refresh:
            return _stop(_refused(answer, what))
        return Decision(Step.REAUTH)
    if action is Action.FATAL:
        return _stop(_fatal(answer, what))
    if action is Action.QUOTA:
        return _quota(answer, s, what)
    return _retryable(action, answer, s, backoff)


def _quota(answer: Answer, s: Situation, what: str) -> Decision:
    """403 with Retry-After: everyone pauses, no attempt is spent; without it: access denied."""
    retry_after = answer.retry_after_s
    if retry_after is None:
        return _stop(
            f"the API answered 403 without Retry-After ({what}): access denied{_m(answer)}"
        )
    # A quota that keeps coming back counts as one long wait: max_wait bounds it too.
    longest = max(retry_after, s.quota_streak_s + retry_after)
    if longest > s.max_wait_s:
        return _stop(_too_long(longest, s.max_wait_s))
    return Decision(Step.RETRY, pause_s=retry_after)


def _retryable(action: Action, answer: Answer, s: Situation, backoff: Backoff) -> Decision:
    """429, 5xx, 408, 425, CONFLICT, transport failures: every Retry-After within max_wait."""
    retry_after = answer.retry_after_s
    if action is Action.THROTTLE:
        pause = DEFAULT_THROTTLE_PAUSE_S if retry_after is None else retry_after
        if pause > s.max_wait_s:
            return _stop(_too_long(pause, s.max_wait_s))
        return _counted(s, answer, backoff, pause_s=pause, slow_down=True)
    if retry_after is not None and retry_after > s.max_wait_s:
        return _stop(_too_long(retry_after, s.max_wait_s))
    if is_outage(answer) and not s.probe and s.outage is Outage.OPEN:
        return Decision(Step.RETRY)  # sent before the outage was noticed: the breaker waits
    return _counted(s, answer, backoff)


def _counted(
    s: Situation,
    answer: Answer,
    backoff: Backoff,
    *,
    pause_s: float | None = None,
    slow_down: bool = False,
) -> Decision:
    failures = s.failures + 1
    delay = backoff.delay(failures, answer.retry_after_s)
    if failures < s.max_attempts:
        return Decision(
            Step.RETRY, counted=True, delay_s=delay, pause_s=pause_s, slow_down=slow_down
        )
    if is_outage(answer) and s.outage is Outage.OPEN:
        return Decision(Step.RETRY, delay_s=delay)  # the outage's fault, not the order's
    if is_outage(answer) and s.outage is Outage.SUSPECTED and not s.held:
        # The last attempt failed while the breaker may be about to open: its verdict, not this
        # order's count, says whether the order failed.
        return Decision(Step.HOLD)
    return Decision(
        Step.RECORD, Outcome.RETRYABLE_FAILED, counted=True, pause_s=pause_s, slow_down=slow_down
    )


def _stop(reason: str) -> Decision:
    return Decision(Step.STOP, reason=reason)


def _m(answer: Answer) -> str:
    return f": {answer.message}" if answer.message else ""


def _too_long(wait_s: float, max_wait_s: float) -> str:
    return (
        f"the API asked to wait {wait_s:.0f}s (Retry-After), longer than max_wait "
        f"{max_wait_s:.0f}s {MAX_WAIT}"
    )


def _refused(answer: Answer, what: str) -> str:
    return (
        f"the API answered 401 after a token refresh ({what}): the access token or the API key "
        f"(MOUVONE_API_KEY) is not accepted" + _m(answer)
    )


def _fatal(answer: Answer, what: str) -> str:
    if answer.status == 404:
        return (
            f"the API answered 404 without its own error object ({what}): the base URL "
            "(MOUVONE_BASE_URL) does not reach the customer-orders API" + _m(answer)
        )
    detail = answer.code or f"HTTP {answer.status}"
    return f"fatal API answer {detail} ({what})" + _m(answer)


def retry_reason(status: int | None, outage: bool) -> str:
    """Why an order is sent again, for the metrics: reauth, throttle, quota, outage, retry."""
    if status == 401:
        return "reauth"
    if status == 429:
        return "throttle"
    if status == 403:
        return "quota"
    return "outage" if outage else "retry"
