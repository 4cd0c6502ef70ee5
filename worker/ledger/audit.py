"""The ledger's history: who ran each run and why, and the append-only attempt log (one row per
request to the API), read the same way from either backend."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator, Sequence

from worker.domain.answer import Answer
from worker.domain.classifier import error_code_for
from worker.ledger.schema import ATTEMPT_COLUMNS, CSV_COLUMNS, RUN_COLUMNS
from worker.ledger.statements import Row, Statements
from worker.runtime.redaction import redact

Query = Callable[[str, Sequence[object]], Iterator[Row]]
Change = Callable[[str, Sequence[object]], int]


def attempt_row(
    run_id: str, order_id: str, method: str, number: int, answer: Answer
) -> tuple[object, ...]:
    """One request in the attempt log, in the ledger's ATTEMPT_COLUMNS order: run_id,
    order_id, attempt, method, sent_at, latency_ms, http_status, error_code, message
    (redacted), request_id, response_id. (Built for every request: a 200 takes the short way.)"""
    status = answer.status
    if status == 200 and answer.failure is None:
        code = message = None
    else:
        code = error_code_for(status, answer.code, answer.failure)
        message = redact.clean(answer.message) if answer.message else None
    return (
        run_id,
        order_id,
        number,
        method,
        answer.sent_at,  # seconds since the epoch: SQLite formats it (in C) as it inserts
        round(answer.latency_ms, 1),
        status,
        code,
        message,
        answer.request_id,
        answer.response_id,
    )


class AuditLog:
    """Reads and prunes a ledger's runs and attempt log."""

    def __init__(self, sql: Statements, query: Query, change: Change) -> None:
        self._sql = sql
        self._query = query
        self._change = change

    def runs(self) -> list[dict[str, object]]:
        """Every run, newest first, with its requests and outcomes (its summary's, or for a
        run that never ended, counted from the attempt log and the orders it holds)."""
        runs = []
        for row in self._query(self._sql.runs, ()):
            run: dict[str, object] = dict(zip(RUN_COLUMNS, row, strict=True))
            summary = _object(run.pop("summary"))
            run["details"] = _object(run["details"])
            counted = summary.get("outcomes")
            run["ending"] = summary.get("ending")  # the run's last line; None while it runs
            if summary:
                run["requests"] = summary.get("requests", summary.get("would_send", 0))
                run["outcomes"] = (
                    {k: v for k, v in counted.items() if v} if isinstance(counted, dict) else {}
                )
            else:
                sent = next(self._query(self._sql.run_requests, (run["run_id"],)), (0,))
                run["requests"] = int(str(sent[0]))
                run["outcomes"] = {
                    str(outcome): n
                    for outcome, n in self._query(self._sql.run_outcomes, (run["run_id"],))
                }
            runs.append(run)
        return runs

    def run(self, run_id: str) -> dict[str, object] | None:
        """One run, as `runs` lists it; None when there is no such run."""
        return next((r for r in self.runs() if r["run_id"] == run_id), None)

    def history(self, order_id: str) -> list[dict[str, object]]:
        """Every attempt on one order across all runs, oldest first, with each run's command,
        operator, reason and ticket."""
        keys = (*ATTEMPT_COLUMNS, "command", "operator", "reason", "ticket")
        rows = self._query(self._sql.history, (order_id,))
        return [_clean(dict(zip(keys, row, strict=True))) for row in rows]

    def attempts(
        self, since: str | None = None, run_id: str | None = None
    ) -> Iterator[dict[str, object]]:
        """The attempt log in the order it was written, from ``since`` (ISO time), of one run."""
        for row in self._query(self._sql.attempts, (since, since, run_id, run_id)):
            yield _clean(dict(zip(ATTEMPT_COLUMNS, row, strict=True)))

    def run_orders(self, run_id: str) -> Iterator[Row]:
        """The orders one run dealt with (it holds their row, or it sent them a request), as
        the report's CSV rows, with their current outcome."""
        yield from redacted(self._query(self._sql.run_orders, (run_id, run_id)))

    def prune(self, before: str) -> int:
        """Delete the attempt rows sent before ``before`` (ISO time); how many went."""
        return self._change(self._sql.prune, (before,))


_MESSAGE = CSV_COLUMNS.index("message")


def redacted(rows: Iterable[Row]) -> Iterator[Row]:
    """Order rows in the CSV column order, the message redacted of every known secret (every
    output path reads the orders through here)."""
    for row in rows:
        message = row[_MESSAGE]
        if isinstance(message, str):
            yield (*row[:_MESSAGE], redact.clean(message), *row[_MESSAGE + 1 :])
        else:
            yield row


def _object(text: object) -> dict[str, object]:
    if not text:
        return {}
    try:
        value = json.loads(str(text))
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _clean(row: dict[str, object]) -> dict[str, object]:
    message = row.get("message")
    if isinstance(message, str):
        row["message"] = redact.clean(message)
    request_id = row.get("request_id")
    if isinstance(request_id, str):  # the W3C trace id the request carried (traceparent)
        row["trace_id"] = request_id.replace("-", "")
    return row
