"""The SQL text of the ledger's shared behaviour: one ``Statements`` per backend, each in its
own dialect (``worker.ledger.sqlite_sql``, ``worker.ledger.pg_sql``)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from worker.ledger.schema import ATTEMPT_COLUMNS, CSV_COLUMNS, RUN_COLUMNS

Row = tuple[object, ...]
Attempts = Sequence[Sequence[object]]  # attempt log rows, in ATTEMPT_COLUMNS order

# The statements without a parameter read the same in both dialects.
OUTCOMES = "SELECT outcome, COUNT(*) FROM orders GROUP BY outcome"
CODES = "SELECT error_code, COUNT(*) FROM orders WHERE error_code IS NOT NULL GROUP BY error_code"
ROWS = f"SELECT {', '.join(CSV_COLUMNS)} FROM orders ORDER BY order_id"
TIMELINE = (
    "SELECT substr(updated_at, 1, 19), outcome, COUNT(*) FROM orders "
    "WHERE outcome <> 'pending' GROUP BY 1, 2 ORDER BY 1"
)
LAST_RUN = f"SELECT {', '.join(RUN_COLUMNS[:7])} FROM runs ORDER BY started_at DESC LIMIT 1"
RUNS = f"SELECT {', '.join(RUN_COLUMNS)} FROM runs ORDER BY started_at DESC, run_id DESC"
# The columns of an order's history: its attempts, each with its run's who and why
HISTORY_OF = (
    "SELECT "
    + ", ".join(f"a.{c}" for c in ATTEMPT_COLUMNS)
    + ", r.command, r.operator, r.reason, r.ticket FROM attempts a "
    "LEFT JOIN runs r ON r.run_id = a.run_id"
)
# What the ledger knows of some orders: outcome, holder, and whether it may have been sent
EXISTING_OF = (
    "SELECT o.order_id, o.outcome, o.run_id, o.outcome = 'retryable_failed' OR "
    "(o.outcome = 'pending' AND (o.attempts > 0 OR r.finished_at IS NULL)) "
    "FROM orders o LEFT JOIN runs r ON r.run_id = o.run_id"
)


@dataclass(frozen=True, slots=True)
class Statements:
    """The SQL text of the shared behaviour, in one backend's dialect. Parameters are
    positional, in the order each field's comment gives; ``ids`` is one parameter holding a list
    (each backend's ``_list`` makes it)."""

    outcomes: str  # outcome -> count, every order
    outcomes_of: str  # (outcome): outcome -> count of one outcome
    codes: str  # error_code -> count
    codes_of: str  # (outcome): error_code -> count of one outcome
    run_outcomes: str  # (run_id): outcome -> count of the orders a run holds
    run_codes: str  # (run_id): error_code -> count of the orders a run holds
    rows: str  # every order in CSV_COLUMNS, by ID
    rows_with: str  # (outcome): the orders of one outcome
    rows_of: str  # (ids): the orders of these IDs
    timeline: str  # (second, outcome, count) of every answered order
    last_run: str  # the newest run's first seven RUN_COLUMNS
    still_mine: str  # (run_id, ids): the IDs still pending under this run
    existing: str  # (ids): (order_id, outcome, run_id, may have been sent)
    candidates: str  # (outcomes, after, limit): IDs of these outcomes after ``after``
    target: str  # the base URL of the first run that may have sent something
    end_run: str  # (finished_at, exit_code, summary, run_id)
    recent_sends: str  # (limit): (sent at, epoch seconds; http_status; run_id), newest first
    commands: str  # (run_id): a run's standing `control` commands, (key, value)
    runs: str  # every run in RUN_COLUMNS, newest first
    run_requests: str  # (run_id): how many requests a run sent
    history: str  # (order_id): its attempts with the run's command, operator, reason, ticket
    attempts: str  # (since, since, run_id, run_id): the attempt log in the order written
    run_orders: str  # (run_id, run_id): the orders a run holds or sent a request for
    prune: str  # (before): delete the attempts sent before
