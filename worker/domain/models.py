"""The ledger's vocabulary: outcomes, one order's result, and a run's summary."""

from __future__ import annotations

import secrets
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum

# The statuses of an order in the API (GET /customer-orders: the filter and each order's own).
ORDER_STATUSES = (
    "Draft",
    "Valid",
    "Cancelled",
    "Submitted",
    "Rejected",
    "InProcess",
    "Accepted",
    "Refused",
)


class Outcome(StrEnum):
    """What happened to one order (the contract's outcome names)."""

    CANCELLED = "cancelled"
    ALREADY_CANCELLED = "already_cancelled"
    NOT_FOUND = "not_found"
    REJECTED = "rejected"
    INVALID = "invalid"
    SKIPPED = "skipped"  # never sent: a precondition failed at send time (--require-status)
    RETRYABLE_FAILED = "retryable_failed"
    PENDING = "pending"


FINAL: frozenset[Outcome] = frozenset(
    {
        Outcome.CANCELLED,
        Outcome.ALREADY_CANCELLED,
        Outcome.NOT_FOUND,
        Outcome.REJECTED,
        Outcome.INVALID,
        Outcome.SKIPPED,
    }
)
RETRYABLE: frozenset[Outcome] = frozenset({Outcome.RETRYABLE_FAILED, Outcome.PENDING})
SUCCESS: frozenset[Outcome] = frozenset({Outcome.CANCELLED, Outcome.ALREADY_CANCELLED})


# How the reasons of the stops that end by themselves end (an outage past its timeout, a
# Retry-After past --max-wait): the run's next step is to resume once the API answers again.
OUTAGE_TIMEOUT = "(outage timeout)"
MAX_WAIT = "(MOUVONE_MAX_WAIT)"
API_WAITS = (OUTAGE_TIMEOUT, MAX_WAIT)


@dataclass(slots=True)  # not frozen: a frozen __init__ costs a call per field
class Result:
    """One order's recorded outcome."""

    order_id: str
    outcome: Outcome
    http_status: int | None = None
    error_code: str | None = None
    message: str | None = None
    attempts: int = 0
    latency_ms: float | None = None

    def log_fields(self) -> dict[str, object]:
        """The fields of the one log event per order outcome."""
        return {
            "order_id": self.order_id,
            "outcome": self.outcome._value_,  # (not .value: a property, on every order)
            "http_status": self.http_status,
            "error_code": self.error_code,
            "attempts": self.attempts,
            "latency_ms": self.latency_ms,
        }


@dataclass(slots=True)
class RunSummary:
    """Counts for one run, built as results arrive."""

    outcomes: Counter[str] = field(default_factory=Counter)
    error_codes: Counter[str] = field(default_factory=Counter)
    skipped_final: int = 0
    duplicates: int = 0
    # ended retryable_failed by another run after this one began: not sent, left to the next run
    failed_elsewhere: int = 0
    # claimed by this run, then taken or answered by another after this run's lease lapsed (a
    # shared ledger): their outcome is that run's
    taken_elsewhere: int = 0
    read: int = 0
    sent_requests: int = 0
    paused_s: float = 0.0  # time every worker waited on 429 / quota answers
    outage_s: float = 0.0  # time the circuit breaker was open
    lowest_rate: float | None = None  # the lowest pace 429s brought the rate down to
    log_lines_lost: int = 0  # log lines standard error could not take
    first_invalid: list[str] = field(default_factory=list)  # where the first invalid IDs are

    def add(self, result: Result) -> None:
        """Count one order's result."""
        self.outcomes[result.outcome._value_] += 1
        if result.error_code:
            self.error_codes[result.error_code] += 1

    @property
    def answered(self) -> int:
        """Orders this run gave a final or retryable outcome to."""
        return sum(self.outcomes.values())

    def all_succeeded(self) -> bool:
        """True when every order counted ended cancelled or already cancelled (and none was
        left failing by another run)."""
        if self.failed_elsewhere:
            return False
        return all(Outcome(name) in SUCCESS for name, n in self.outcomes.items() if n)


@dataclass(frozen=True)
class RunRecord:
    """Who started a run, why, and from what (recorded when it begins)."""

    operator: str | None = None
    host: str | None = None
    reason: str | None = None
    ticket: str | None = None
    details: dict[str, object] = field(default_factory=dict)  # command line, input, limits...


@dataclass(frozen=True)
class RunOptions:
    """How this run treats its input."""

    command: str = "run"
    force: bool = False
    dry_run: bool = False
    progress_bar: bool = False
    total: int | None = None  # orders in the input, when known beforehand
    resume: str = ""  # the command line that resumes this run (secrets removed)
    plan: str = ""  # `apply`: the digest of the plan it sends
    plan_expires_at: str = ""  # `apply`: when the plan expires (a resume after is refused)
    who: RunRecord | None = None  # who started it and why, recorded with the run
    approved: int | None = None  # orders the confirmation or --max-orders counted: no more
    predict: bool = False  # `check`: each order's GET says what its DELETE would answer


# how a check that predicts failures ends (its last line and its summary event)
CHECKED_FAILING = "checked; some orders would not be cancelled (the report)"


@dataclass
class RunReport:
    """How a run ended."""

    run_id: str
    exit_code: int
    summary: RunSummary
    elapsed_s: float
    dry_run: bool
    reason: str | None = None
    skipped_outcomes: dict[str, int] = field(default_factory=dict)
    ledger: str = ""
    not_read: int = 0  # IDs of the input not read because the run stopped first
    layout: dict[str, str] = field(default_factory=dict)  # the input's column, separator...
    limits: dict[str, float] = field(default_factory=dict)  # rate, concurrency... in force
    target: str = ""  # the target's name or base URL, and the token host
    resume: str = ""  # the command line that resumes it
    plan: str = ""  # the digest of the plan it applied
    resume_before: str = ""  # when the resume's plan expires (`apply` stopped early)
    predicted: bool = False  # a check's: its outcomes are predictions, nothing is recorded

    @property
    def ending(self) -> str:
        """How the run ended, in one line (`done` on exit 0): the last line of its standard
        error, and ``ending`` in its JSON summary and run record."""
        code = self.exit_code
        if code == 0:
            return "done"
        if self.predicted:
            if code == 1:
                return CHECKED_FAILING
            why = self.reason or f"exit {code}"
            return f"{why}; nothing was recorded: the same command checks every order again"
        if code == 1:
            if self.dry_run:
                return "some IDs of the input are invalid (above); nothing was sent"
            return "finished; some orders need a person: cancel-orders report"
        if code in (3, 4, 129, 130, 143):
            why = self.reason or f"exit {code}"
            then = "resume with the same command"
            if code == 3:  # the API's trouble passes by itself; anything else needs a fix first
                waited = why.endswith(API_WAITS)
                then = f"{then} once the API answers again" if waited else f"fix that, then {then}"
            return f"{why}; unanswered orders stay pending: {then}"
        return self.reason or f"exit {code}"

    def as_dict(self) -> dict[str, object]:
        """The summary event's fields."""
        s = self.summary
        fields: dict[str, object] = {
            "run_id": self.run_id,
            "target": self.target,
            "exit_code": self.exit_code,
            "reason": self.reason,
            "ending": self.ending,
            "dry_run": self.dry_run,
            "orders_read": s.read,
            "outcomes": {o.value: s.outcomes.get(o.value, 0) for o in Outcome},
            "error_codes": dict(sorted(s.error_codes.items())),
            "skipped_final": s.skipped_final,
            "duplicates": s.duplicates,
            "would_send" if self.dry_run else "requests": s.sent_requests,
            "elapsed_s": round(self.elapsed_s, 3),
            "rate_per_s": (
                round(s.sent_requests / self.elapsed_s, 2)
                if self.elapsed_s and not self.dry_run
                else 0.0
            ),
            "paused_s": round(s.paused_s, 3),
            "outage_s": round(s.outage_s, 3),
            "lowest_rate": round(s.lowest_rate, 2) if s.lowest_rate is not None else None,
            "ledger": self.ledger,
            "not_read": self.not_read,
        }
        if self.resume:
            fields["resume"] = self.resume
            if self.resume_before:
                fields["resume_before"] = self.resume_before
        if self.plan:
            fields["plan"] = self.plan
        if self.limits:
            fields["limits"] = dict(self.limits)
        if self.dry_run:
            fields["input"] = {k: v for k, v in self.layout.items() if k != "index"}
            fields["first_invalid"] = list(s.first_invalid)
        if s.failed_elsewhere:
            fields["failed_elsewhere"] = s.failed_elsewhere
        if s.taken_elsewhere:
            fields["taken_elsewhere"] = s.taken_elsewhere
        if s.log_lines_lost:
            fields["log_lines_lost"] = s.log_lines_lost
        return fields


def new_run_id() -> str:
    """Sortable and unique: UTC time plus random hex."""
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ-") + secrets.token_hex(3)
