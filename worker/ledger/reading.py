"""Reading the ledger: counts, rows for the reports, the timeline, the last run."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator, Sequence

from worker.ledger.schema import CSV_COLUMNS, RUN_COLUMNS
from worker.runtime.redaction import redact


class LedgerReads:
    """The ledger's reads (a part of Ledger: its connection is ``_db``)."""

    _db: sqlite3.Connection

    def counts(self, outcome: str | None = None) -> tuple[dict[str, int], dict[str, int]]:
        """(outcome -> count, error_code -> count), optionally for one outcome."""
        where, args = ("WHERE outcome = ?", (outcome,)) if outcome else ("", ())
        outcomes = dict(
            self._db.execute(f"SELECT outcome, COUNT(*) FROM orders {where} GROUP BY outcome", args)
        )
        codes = dict(
            self._db.execute(
                f"SELECT error_code, COUNT(*) FROM orders {where} "
                f"{'AND' if where else 'WHERE'} error_code IS NOT NULL GROUP BY error_code",
                args,
            )
        )
        return outcomes, codes

    def run_counts(self, run_id: str) -> tuple[dict[str, int], dict[str, int]]:
        """(outcome -> count, error_code -> count) of the orders one run holds: what it
        answered, what it found invalid, and what it claimed and left `pending`."""
        outcomes = dict(
            self._db.execute(
                "SELECT outcome, COUNT(*) FROM orders WHERE run_id = ? GROUP BY outcome", (run_id,)
            )
        )
        codes = dict(
            self._db.execute(
                "SELECT error_code, COUNT(*) FROM orders WHERE run_id = ? AND error_code IS NOT "
                "NULL GROUP BY error_code",
                (run_id,),
            )
        )
        return outcomes, codes

    def rows(self, outcome: str | None = None) -> Iterator[tuple[object, ...]]:
        """Every order row in the CSV column order, by order ID; the message redacted of every
        known secret (every output path reads the orders here)."""
        cols = ", ".join(CSV_COLUMNS)
        if outcome:
            found = self._stream(
                f"SELECT {cols} FROM orders WHERE outcome = ? ORDER BY order_id", (outcome,)
            )
        else:
            found = self._stream(f"SELECT {cols} FROM orders ORDER BY order_id")
        yield from redacted(found)

    def _stream(self, sql: str, args: Sequence[object] = ()) -> Iterator[tuple[object, ...]]:
        """A query's rows as they are read (a large report holds no list of them)."""
        return iter(self._db.execute(sql, args))

    def rows_of(self, order_ids: list[str]) -> Iterator[tuple[object, ...]]:
        """The rows of these orders (those in the ledger), as ``rows`` gives them."""
        cols = ", ".join(CSV_COLUMNS)
        marks = ",".join("?" * len(order_ids))
        found = self._db.execute(
            f"SELECT {cols} FROM orders WHERE order_id IN ({marks}) ORDER BY order_id", order_ids
        )
        yield from redacted(found)

    def timeline(self) -> list[tuple[str, str, int]]:
        """(second as YYYY-MM-DDTHH:MM:SS, outcome, orders) for every answered order."""
        rows = self._db.execute(
            "SELECT substr(updated_at, 1, 19), outcome, COUNT(*) FROM orders "
            "WHERE outcome != 'pending' GROUP BY 1, 2 ORDER BY 1"
        )
        return [(str(second), str(outcome), int(n)) for second, outcome, n in rows]

    def last_run(self) -> dict[str, object] | None:
        """The most recent run's row."""
        row = self._db.execute(
            "SELECT run_id, command, base_url, started_at, finished_at, exit_code, summary "
            "FROM runs ORDER BY started_at DESC LIMIT 1"
        ).fetchone()
        if row is None:
            return None
        return dict(zip(RUN_COLUMNS[:7], row, strict=True))


_MESSAGE = CSV_COLUMNS.index("message")


def redacted(rows: Iterable[tuple[object, ...]]) -> Iterator[tuple[object, ...]]:
    """Order rows in the CSV column order, the message redacted of every known secret (every
    output path reads the orders through here)."""
    for row in rows:
        message = row[_MESSAGE]
        if isinstance(message, str):
            yield (*row[:_MESSAGE], redact.clean(message), *row[_MESSAGE + 1 :])
        else:
            yield row
