"""What both ledgers share of their tables: the schema's version, the final outcomes as they are
written, the columns of the runs, the attempt log and the exports."""

from __future__ import annotations

from worker.domain.models import FINAL

# 2: the control table; 3: the attempt log, who ran each run and why; 4: a shared ledger's
# lease term, written by the run that holds the lease (PostgreSQL; a file has no leases); 5: a
# compact attempt log behind a view of the same columns (SQLite; nothing changes in PostgreSQL);
# 6: the orders compact behind a view of the same columns, both views writable (SQLite); one
# index of the attempt log, (order, request id) unique, where there were two (PostgreSQL); 7: the
# orders without an index of their outcomes, their pages half filled by inserts, so that a result
# rewrites its order's row in place (PostgreSQL; nothing changes in SQLite)
SCHEMA_VERSION = 7
ORDER_STATE_SINCE = 6  # the first SQLite schema with its orders in ``order_state``
FINAL_VALUES = frozenset(o.value for o in FINAL)  # the final outcomes, as the ledger writes them
FINAL_SQL = ", ".join(f"'{o.value}'" for o in sorted(FINAL))

RUN_COLUMNS = (  # the runs table; the first seven were there from the start
    "run_id",
    "command",
    "base_url",
    "started_at",
    "finished_at",
    "exit_code",
    "summary",
    "operator",
    "host",
    "reason",
    "ticket",
    "details",
)

# Columns a ledger of an earlier schema lacks, added in place (ALTER TABLE) on first open.
RUN_COLUMNS_ADDED = ("operator", "host", "reason", "ticket", "details")

ATTEMPT_COLUMNS = (
    "run_id",
    "order_id",
    "attempt",
    "method",
    "sent_at",
    "latency_ms",
    "http_status",
    "error_code",
    "message",
    "request_id",
    "response_id",
)

ORDER_COLUMNS = (  # the orders, as a person reads them (SQLite: the view over order_state)
    "order_id",
    "outcome",
    "http_status",
    "error_code",
    "message",
    "attempts",
    "run_id",
    "created_at",
    "updated_at",
)
CSV_COLUMNS = (*ORDER_COLUMNS[:6], "updated_at")
