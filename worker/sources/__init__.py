"""Where orders come from.

The pool takes its orders from a ``worker.pipeline.ports.Source``: the input claimed in the
ledger (``claimed``) or a Redis stream's entries (``stream_entries``). The input claimed is an
``OrderInput``: a CSV file or standard input (``csv_file``), an API selection
(``selection``), a plan (``plan``), a ledger's retryable orders (``ledger_source``); each
yields batches of (order ID, invalid result or None)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Protocol

from worker.domain.models import Outcome, Result

MAX_STORED_ID = 100  # longer invalid IDs are stored shortened
# The longest ID a ledger can key, whatever the pattern: PostgreSQL's indexes take an entry of
# about 2,700 bytes at most, 500 characters of up to 4 bytes each (an order ID has 13).
MAX_ID_CHARS = 500

Batch = list[tuple[str, Result | None]]


class OrderInput(Protocol):
    """Order IDs read in batches, so memory does not grow with the input."""

    name: str

    def scan(self) -> int:
        """Read the whole input once without acting on it; the number of IDs it holds.

        Raises InputError for an input that cannot be read, so nothing is sent.
        """
        ...

    def batches(self, size: int) -> Iterator[Batch]:
        """The IDs, in input order, validated against the ID pattern."""
        ...


class IdValidator:
    """Checks IDs against the ID pattern (the whole ID must match)."""

    def __init__(self, pattern: str) -> None:
        self.pattern = pattern
        self._regex = re.compile(pattern)

    def matches(self, value: str) -> bool:
        """True when ``value`` is a well-formed order ID. Whatever the pattern (one that
        accepts anything, say), none holds U+0000 or is longer than MAX_ID_CHARS: no ledger
        can keep the one as it is (PostgreSQL's text cannot hold it, the batches' JSON carries
        it as U+FFFD: its row would be another ID's), nor index the other (its claim failed
        the whole batch)."""
        return (
            len(value) <= MAX_ID_CHARS
            and "\x00" not in value
            and self._regex.fullmatch(value) is not None
        )

    def check(self, value: str, where: str) -> tuple[str, Result | None]:
        """(ID, None) for a valid ID, else (stored ID, an `invalid` result saying why)."""
        if self.matches(value):
            return value, None
        stored = value.replace("\x00", "\ufffd")
        if len(stored) > MAX_STORED_ID:
            stored = f"{stored[:MAX_STORED_ID]}...(+{len(stored) - MAX_STORED_ID} chars)"
        if len(value) > MAX_ID_CHARS:
            why = f"{len(value)} characters long, where an order ID has at most {MAX_ID_CHARS}"
        elif "\x00" in value:
            why = "holds U+0000, which no order ID does"
        else:
            why = f"does not match the ID pattern {self.pattern}"
        return stored, Result(stored, Outcome.INVALID, None, "WRONG_FORMAT", f"{where}: {why}", 0)
