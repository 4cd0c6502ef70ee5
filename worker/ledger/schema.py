"""The ledger's SQL text: the schema and its version, the upserts, the export columns."""

from __future__ import annotations

from worker.models import FINAL

SCHEMA_VERSION = 1
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
    summary     TEXT
);
PRAGMA user_version = {SCHEMA_VERSION};
"""

# Built from constants only.
UPSERT_RESULT = f"""
INSERT INTO orders (order_id, outcome, http_status, error_code, message, attempts, run_id,
                    created_at, updated_at)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (order_id) DO UPDATE SET
    outcome = excluded.outcome, http_status = excluded.http_status,
    error_code = excluded.error_code, message = excluded.message, attempts = excluded.attempts,
    run_id = excluded.run_id, updated_at = excluded.updated_at
WHERE excluded.outcome != 'pending' OR orders.outcome NOT IN ({FINAL_SQL})
"""

CLAIM = """
INSERT INTO orders (order_id, outcome, attempts, run_id, created_at, updated_at)
VALUES (?, 'pending', 0, ?, ?, ?)
ON CONFLICT (order_id) DO UPDATE SET run_id = excluded.run_id, updated_at = excluded.updated_at
"""

CSV_COLUMNS = (
    "order_id",
    "outcome",
    "http_status",
    "error_code",
    "message",
    "attempts",
    "updated_at",
)
