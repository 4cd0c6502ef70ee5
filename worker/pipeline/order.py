"""An order being worked on."""

from __future__ import annotations

from dataclasses import dataclass, field

from worker.domain.answer import Answer
from worker.domain.classifier import error_code_for
from worker.domain.models import Outcome, Result
from worker.runtime.redaction import redact


@dataclass(slots=True)
class OrderState:
    """What is known of one order while it is being worked on."""

    order_id: str
    attempts: int = 0  # DELETEs sent
    lookups: int = 0  # GETs sent (the look-up before a DELETE)
    failures: int = 0  # retryable failures, counted against max_attempts
    refresh_generation: int | None = None  # the token generation its own refresh produced
    held: bool = False  # it waited for the breaker's verdict once
    token: str = ""  # the token its last request carried
    in_flight: bool = False  # a request for it is on the wire
    probing: bool = False  # it holds the probe lock (credentials not yet proven)
    lost: bool = False  # its source found it taken by another run before it was sent
    handle: str = ""  # its source's own reference to it (a stream entry's ID)
    verify: bool = False  # an earlier request may have reached the API: GET before sending
    last: Answer | None = field(default=None)
    tried: list[tuple[object, ...]] | None = None  # its attempts, for a sink that keeps them
    due_in: float | None = None  # shelved: seconds until its next attempt (a timer, no worker)
    resumed: bool = False  # taken again from the shelf: its look-up, if any, is done
    slot: float = 0.0  # the limiter slot its last request went in (monotonic)

    @property
    def what(self) -> str:
        """The order, as a reason to stop names it."""
        return f"order {self.order_id}"

    def pending(self) -> Result:
        """Left unanswered because the run stopped."""
        return self.result(Outcome.PENDING)

    def result(self, outcome: Outcome, message: str | None = None) -> Result:
        """A Result from the last answer (if any) with this outcome."""
        last = self.last
        if last is None:
            return Result(self.order_id, outcome, None, None, message, self.attempts)
        return Result(
            self.order_id,
            outcome,
            last.status,
            error_code_for(last.status, last.code, last.failure),
            redact.clean(text) if (text := message or last.message) else None,
            self.attempts,
            round(last.latency_ms, 1),
        )
