"""The ledger's SQL text: the schema and its version, the upserts, the export columns."""

from __future__ import annotations

from worker.domain.models import FINAL

# 2: the control table; 3: the attempt log, who ran each run and why; 4: a shared ledger's
# lease term, written by the run that holds the lease (PostgreSQL; a file has no leases)
SCHEMA_VERSION = 4
FINAL_VALUES = frozenset(o.value for o in FINAL)  # the final outcomes, as the ledger writes them
FINAL_SQL = ", ".join(f"'{o.value}'" for o in sorted(FINAL))

SCHEMA = f"""
CREATE TABLE IF NOT EXISTS orders (
    order_id    TEXT PRIMARY KEY,
    outcome     TEXT NOT NULL,
    http_status INTEGER,
    error_code  TEXT,
    message     TEXT,
    attempts    INTEGER NOT NULL DEFAULT 0,
    run_id      TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    updated_at  TEXT NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS orders_by_outcome ON orders(outcome, order_id);
CREATE TABLE IF NOT EXISTS runs (
    run_id      TEXT PRIMARY KEY,
    command     TEXT NOT NULL,
    base_url    TEXT,
    started_at  TEXT NOT NULL,
    finished_at TEXT,
    exit_code   INTEGER,
    summary     TEXT,
    operator    TEXT,
    host        TEXT,
    reason      TEXT,
    ticket      TEXT,
    details     TEXT
);
CREATE TABLE IF NOT EXISTS attempts (
    run_id      TEXT NOT NULL,
    order_id    TEXT NOT NULL,
    attempt     INTEGER NOT NULL,
    method      TEXT NOT NULL,
    sent_at     TEXT NOT NULL,
    latency_ms  REAL,
    http_status INTEGER,
    error_code  TEXT,
    message     TEXT,
    request_id  TEXT NOT NULL,
    response_id TEXT
);
CREATE INDEX IF NOT EXISTS attempts_by_order ON attempts(order_id);
CREATE TABLE IF NOT EXISTS control (
    run_id      TEXT NOT NULL,
    key         TEXT NOT NULL,
    value       TEXT NOT NULL,
    updated_at  TEXT NOT NULL,
    PRIMARY KEY (run_id, key)
) WITHOUT ROWID;
PRAGMA user_version = {SCHEMA_VERSION};
"""

# The batch forms: one statement per batch, its rows in one JSON parameter, so that the whole
# batch runs inside SQLite (which releases the GIL) instead of row by row in Python.
# ?1: JSON array of order IDs; ?2: run id; ?3: time stamp.
CLAIM_BATCH = """
INSERT INTO orders (order_id, outcome, attempts, run_id, created_at, updated_at)
SELECT value, 'pending', 0, ?2, ?3, ?3 FROM json_each(?1) WHERE true
ON CONFLICT (order_id) DO UPDATE SET run_id = excluded.run_id, updated_at = excluded.updated_at
"""

# ?1: JSON array of results as objects (order_id, outcome, http_status, error_code, message,
# attempts); ?2: run id; ?3: time stamp.
UPSERT_BATCH = f"""
INSERT INTO orders (order_id, outcome, http_status, error_code, message, attempts, run_id,
                    created_at, updated_at)
SELECT json_extract(value, '$.order_id'), json_extract(value, '$.outcome'),
       json_extract(value, '$.http_status'), json_extract(value, '$.error_code'),
       json_extract(value, '$.message'), json_extract(value, '$.attempts'), ?2, ?3, ?3
FROM json_each(?1) WHERE true
ON CONFLICT (order_id) DO UPDATE SET
    outcome = excluded.outcome, http_status = excluded.http_status,
    error_code = excluded.error_code, message = excluded.message, attempts = excluded.attempts,
    run_id = excluded.run_id, updated_at = excluded.updated_at
WHERE excluded.outcome != 'pending' OR orders.outcome NOT IN ({FINAL_SQL})
"""

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

CSV_COLUMNS = (
    "order_id",
    "outcome",
    "http_status",
    "error_code",
    "message",
    "attempts",
    "updated_at",
)
