"""Order IDs taken back from a ledger: the ones `retry` sends again."""

from __future__ import annotations

from collections.abc import Iterator

from worker.domain.location import Location
from worker.domain.models import RETRYABLE
from worker.ledger import ledger_at
from worker.sources import Batch, IdValidator


class LedgerSource:
    """The orders whose outcome is `retryable_failed` or `pending`, in ID order, each checked
    against the ID pattern again (a ledger edited by hand or by another version: an ID that
    fails is recorded `invalid`, never sent)."""

    def __init__(self, path: Location, validator: IdValidator) -> None:
        self.path = path
        self.name = f"{path} (retryable_failed and pending orders)"
        self._validator = validator

    def scan(self) -> int:
        """How many orders there are to retry now."""
        ledger = ledger_at(self.path, readonly=True)
        try:
            outcomes, _ = ledger.counts()
        finally:
            ledger.close()
        return sum(outcomes.get(o.value, 0) for o in RETRYABLE)

    def batches(self, size: int) -> Iterator[Batch]:
        """Keyset pages over a read-only connection of its own."""
        ledger = ledger_at(self.path, readonly=True)
        check = self._validator.check
        try:
            last = ""
            while page := ledger.candidates(RETRYABLE, last, size):
                last = page[-1]
                yield [check(order_id, "the ledger") for order_id in page]
        finally:
            ledger.close()
