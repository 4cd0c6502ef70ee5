"""The SQLite ledger's SQL text: its schema, its batch statements, and the shared behaviour's
statements in SQLite's dialect (``?`` placeholders; a list is one JSON parameter)."""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence

import worker.ledger.statements as common
from worker.ledger.schema import (
    ATTEMPT_COLUMNS,
    CSV_COLUMNS,
    FINAL_SQL,
    SCHEMA_VERSION,
)

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

CONTROL_UPSERT = (
    "INSERT OR REPLACE INTO control (run_id, key, value, updated_at) VALUES (?, ?, ?, ?)"
)

BEGIN_RUN = (
    "INSERT INTO runs (run_id, command, base_url, started_at, operator, host, reason, ticket, "
    "details) VALUES (?,?,?,?,?,?,?,?,?)"
)

ROWS_PER_INSERT = 200  # attempt rows in one INSERT statement (2,200 parameters)
_SENT_AT = ATTEMPT_COLUMNS.index("sent_at")
_ONE_ROW = (
    "("
    + ",".join(
        "strftime('%Y-%m-%dT%H:%M:%fZ', ?, 'unixepoch')" if k == _SENT_AT else "?"
        for k in range(len(ATTEMPT_COLUMNS))
    )
    + ")"
)
_INSERT = f"INSERT INTO attempts ({', '.join(ATTEMPT_COLUMNS)}) VALUES "
_FULL_INSERT = _INSERT + ",".join([_ONE_ROW] * ROWS_PER_INSERT)


def insert_attempts(
    rows: Sequence[Sequence[object]],
) -> Iterator[tuple[str, list[object]]]:
    """(SQL, parameters) appending these attempt rows, ROWS_PER_INSERT rows a statement
    (fewer statements to step through than one per row)."""
    for start in range(0, len(rows), ROWS_PER_INSERT):
        chunk = rows[start : start + ROWS_PER_INSERT]
        sql = (
            _FULL_INSERT
            if len(chunk) == ROWS_PER_INSERT
            else _INSERT + ",".join([_ONE_ROW] * len(chunk))
        )
        yield sql, list(itertools.chain.from_iterable(chunk))


_IN = "IN (SELECT value FROM json_each(?))"  # a list as one JSON parameter
_CSV = ", ".join(CSV_COLUMNS)
_ATTEMPTS = ", ".join(ATTEMPT_COLUMNS)

STATEMENTS = common.Statements(
    outcomes=common.OUTCOMES,
    outcomes_of="SELECT outcome, COUNT(*) FROM orders WHERE outcome = ? GROUP BY outcome",
    codes=common.CODES,
    codes_of="SELECT error_code, COUNT(*) FROM orders WHERE outcome = ? AND error_code IS NOT "
    "NULL GROUP BY error_code",
    run_outcomes="SELECT outcome, COUNT(*) FROM orders WHERE run_id = ? GROUP BY outcome",
    run_codes="SELECT error_code, COUNT(*) FROM orders WHERE run_id = ? AND error_code IS NOT "
    "NULL GROUP BY error_code",
    rows=common.ROWS,
    rows_with=f"SELECT {_CSV} FROM orders WHERE outcome = ? ORDER BY order_id",
    rows_of=f"SELECT {_CSV} FROM orders WHERE order_id {_IN} ORDER BY order_id",
    timeline=common.TIMELINE,
    last_run=common.LAST_RUN,
    still_mine="SELECT order_id FROM orders WHERE run_id = ? AND outcome = 'pending' AND "
    f"order_id {_IN}",
    existing=f"{common.EXISTING_OF} WHERE o.order_id {_IN}",
    candidates=f"SELECT order_id FROM orders WHERE outcome {_IN} AND order_id > ? "
    "ORDER BY order_id LIMIT ?",
    target="SELECT base_url FROM runs WHERE base_url IS NOT NULL AND (finished_at IS NULL "
    "OR coalesce(json_extract(summary, '$.requests'), 1) > 0) ORDER BY started_at LIMIT 1",
    end_run="UPDATE runs SET finished_at = ?, exit_code = ?, summary = ? WHERE run_id = ?",
    recent_sends="SELECT sent_at, http_status, run_id FROM attempts ORDER BY rowid DESC LIMIT ?",
    commands="SELECT key, value FROM control WHERE run_id = ? AND key != 'status'",
    runs=common.RUNS,
    run_requests="SELECT COUNT(*) FROM attempts WHERE run_id = ?",
    history=f"{common.HISTORY_OF} WHERE a.order_id = ? ORDER BY a.sent_at, a.rowid",
    attempts=f"SELECT {_ATTEMPTS} FROM attempts WHERE (? IS NULL OR sent_at >= ?) "
    "AND (? IS NULL OR run_id = ?) ORDER BY rowid",
    run_orders=f"SELECT {_CSV} FROM orders WHERE run_id = ? OR order_id IN "
    "(SELECT order_id FROM attempts WHERE run_id = ?) ORDER BY order_id",
    prune="DELETE FROM attempts WHERE sent_at < ?",
)
