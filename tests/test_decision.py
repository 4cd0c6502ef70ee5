"""The one decision on an answer, shared by the cancellations and the look-ups: one table."""

from __future__ import annotations

import pytest

from worker.domain.answer import Answer
from worker.domain.classifier import OutcomeTable
from worker.domain.decision import Decision, Outage, Situation, Step, decide
from worker.domain.models import Outcome
from worker.domain.retry import Backoff

TABLE = OutcomeTable.load(None)
BACKOFF = Backoff(0.5, 30.0, rand=lambda: 1.0)  # no jitter: the ceiling itself
NOT_FOUND = "CUSTOMER_ORDER_NOT_FOUND"


def situation(**changes: object) -> Situation:
    """Two failures so far of at most five, max_wait 300 s."""
    values: dict[str, object] = {"failures": 2, "max_attempts": 5, "max_wait_s": 300.0}
    values.update(changes)
    return Situation(**values)  # type: ignore[arg-type]


CASES: list[tuple[str, Answer, Situation, Decision]] = [
    ("200", Answer(200), situation(), Decision(Step.RECORD, Outcome.CANCELLED)),
    ("400 final code", Answer(400, "R0008"), situation(), Decision(Step.RECORD, Outcome.REJECTED)),
    ("404 of the API", Answer(404, NOT_FOUND), situation(),
     Decision(Step.RECORD, Outcome.NOT_FOUND)),
    ("429 pauses all, spends one", Answer(429, retry_after_s=3), situation(),
     Decision(Step.RETRY, counted=True, delay_s=3.0, pause_s=3.0, slow_down=True)),
    ("429 without Retry-After", Answer(429), situation(),
     Decision(Step.RETRY, counted=True, delay_s=2.0, pause_s=1.0, slow_down=True)),
    ("429 over max_wait", Answer(429, retry_after_s=301), situation(), Decision(Step.STOP)),
    ("quota pauses all, spends none", Answer(403, retry_after_s=20), situation(),
     Decision(Step.RETRY, pause_s=20.0)),
    ("quota streak over max_wait", Answer(403, retry_after_s=20), situation(quota_streak_s=290),
     Decision(Step.STOP)),
    ("403 without Retry-After", Answer(403), situation(), Decision(Step.STOP)),
    ("401 refreshes", Answer(401), situation(), Decision(Step.REAUTH)),
    ("401 to the refreshed token", Answer(401), situation(refused_after_refresh=True),
     Decision(Step.STOP)),
    ("fatal code", Answer(400, "USER_ID_INVALID"), situation(), Decision(Step.STOP)),
    ("bare 404", Answer(404, message="Resource not found"), situation(), Decision(Step.STOP)),
    ("503 backs off", Answer(503), situation(), Decision(Step.RETRY, counted=True, delay_s=2.0)),
    ("503 Retry-After within max_wait", Answer(503, retry_after_s=60), situation(),
     Decision(Step.RETRY, counted=True, delay_s=60.0)),
    ("503 Retry-After over max_wait", Answer(503, retry_after_s=3600), situation(),
     Decision(Step.STOP)),
    ("last attempt fails", Answer(503), situation(failures=4),
     Decision(Step.RECORD, Outcome.RETRYABLE_FAILED, counted=True)),
    ("last attempt, outage suspected", Answer(503), situation(failures=4, outage=Outage.SUSPECTED),
     Decision(Step.HOLD)),
    ("last attempt, held, no outage", Answer(503), situation(failures=4, held=True),
     Decision(Step.RECORD, Outcome.RETRYABLE_FAILED, counted=True)),
    ("last attempt, outage open", Answer(None, failure="timeout"),
     situation(failures=4, outage=Outage.OPEN, probe=True),
     Decision(Step.RETRY, delay_s=8.0)),
    ("answer from before the outage", Answer(502), situation(outage=Outage.OPEN),
     Decision(Step.RETRY)),
    ("a business refusal in an outage", Answer(400, "CONFLICT"),
     situation(failures=4, outage=Outage.OPEN),
     Decision(Step.RECORD, Outcome.RETRYABLE_FAILED, counted=True)),
]  # fmt: skip


@pytest.mark.parametrize(
    ("answer", "s", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_decision(answer: Answer, s: Situation, expected: Decision) -> None:
    """Each answer in each situation gets exactly one decision; stops say why."""
    verdict = TABLE.classify(answer.status, answer.code, answer.failure)
    got = decide(verdict, answer, s, BACKOFF, "order ABC0000000001")
    if expected.step is Step.STOP:
        assert got.step is Step.STOP
        assert "ABC0000000001" in got.reason or "max_wait" in got.reason
    else:
        assert got == expected


def test_stop_reasons_name_the_fix() -> None:
    """A bare 404 names the base URL setting; a long Retry-After names max_wait."""
    bare = decide(TABLE.classify(404, None, None), Answer(404), situation(), BACKOFF, "order X")
    assert "MOUVONE_BASE_URL" in bare.reason
    late = Answer(503, retry_after_s=3600)
    long = decide(TABLE.classify(503, None, None), late, situation(), BACKOFF, "order X")
    assert "3600s" in long.reason
    assert "MOUVONE_MAX_WAIT" in long.reason
