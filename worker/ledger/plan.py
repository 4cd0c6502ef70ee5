"""What a claim decides for one batch of input IDs."""

from __future__ import annotations

from dataclasses import dataclass, field

from worker.domain.models import Result


@dataclass
class Plan:
    """What to do with one batch of input IDs."""

    to_send: list[str] = field(default_factory=list)
    invalid: list[Result] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # outcomes of orders already final
    duplicates: int = 0
    # to send, but an earlier run may have sent them already (left pending or retryable)
    uncertain: set[str] = field(default_factory=set)
    # pending under another run that lives (a shared ledger): asked for again later
    held: list[str] = field(default_factory=list)
    # ended retryable_failed by another run after this one began (it spent their attempts):
    # left to the next run, which retries them
    failed_elsewhere: list[str] = field(default_factory=list)
