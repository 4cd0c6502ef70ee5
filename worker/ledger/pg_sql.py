"""The PostgreSQL ledger's statements (its schema is in ``worker.ledger.postgres``)."""

from __future__ import annotations

from worker.ledger.schema import ATTEMPT_COLUMNS, FINAL_SQL

INSERT_NEW = (
    "INSERT INTO orders (order_id, outcome, attempts, run_id, created_at, updated_at) "
    "SELECT i, 'pending', 0, %s, %s, %s FROM unnest(%s::text[]) AS i ORDER BY i "
    "ON CONFLICT (order_id) DO NOTHING RETURNING order_id"
)
OUTCOMES = "SELECT order_id, outcome FROM orders WHERE order_id = ANY(%s)"

UPSERT = f"""
INSERT INTO orders (order_id, outcome, http_status, error_code, message, attempts, run_id,
                    created_at, updated_at)
SELECT DISTINCT ON (r.order_id) r.order_id, r.outcome, r.http_status, r.error_code, r.message,
       coalesce(r.attempts, 0), %(run)s, %(at)s, %(at)s
FROM ROWS FROM (jsonb_to_recordset(%(rows)s::jsonb) AS (order_id text, outcome text,
          http_status int, error_code text, message text, attempts int))
     WITH ORDINALITY AS r(order_id, outcome, http_status, error_code, message, attempts, n)
ORDER BY r.order_id, r.outcome = 'pending', r.n DESC
ON CONFLICT (order_id) DO UPDATE SET
    outcome = excluded.outcome, http_status = excluded.http_status,
    error_code = excluded.error_code, message = excluded.message, attempts = excluded.attempts,
    run_id = excluded.run_id, updated_at = excluded.updated_at
WHERE excluded.outcome <> 'pending' OR orders.outcome NOT IN ({FINAL_SQL})
"""

TYPES = ("text", "text", "int", "text", "float8", "float8", "int", "text", "text", "text", "text")
ATTEMPTS = (
    f"INSERT INTO attempts ({', '.join(ATTEMPT_COLUMNS)}) SELECT "
    + ", ".join(
        "to_char(to_timestamp(c5) AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"')"
        if k == ATTEMPT_COLUMNS.index("sent_at")
        else f"c{k + 1}"
        for k in range(len(ATTEMPT_COLUMNS))
    )
    + " FROM unnest("
    + ", ".join(f"%s::{t}[]" for t in TYPES)
    + ") AS a("
    + ", ".join(f"c{k + 1}" for k in range(len(ATTEMPT_COLUMNS)))
    + ") ON CONFLICT (request_id) DO NOTHING"
)

LOCK_HELD = f"""
SELECT o.order_id, o.outcome, o.run_id, o.updated_at,
       o.outcome = 'retryable_failed' OR
           (o.outcome = 'pending' AND (o.attempts > 0 OR r.finished_at IS NULL)),
       o.outcome = 'pending' AND r.finished_at IS NULL
           AND r.heartbeat_at > now() - make_interval(secs => coalesce(r.lease_s, %(idle)s))
FROM orders o LEFT JOIN runs r ON r.run_id = o.run_id
WHERE o.order_id = ANY(%(ids)s) AND (o.run_id = %(run)s OR %(force)s
                                     OR o.outcome NOT IN ({FINAL_SQL}))
FOR UPDATE OF o SKIP LOCKED
"""
