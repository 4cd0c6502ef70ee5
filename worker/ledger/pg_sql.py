"""The PostgreSQL ledger's SQL text: its schema and migrations, its claim and batch statements,
and the shared behaviour's statements in PostgreSQL's dialect (``%s`` placeholders; a list is
one array parameter)."""

from __future__ import annotations

import worker.ledger.statements as common
from worker.ledger.schema import ATTEMPT_COLUMNS, CSV_COLUMNS, FINAL_SQL


def any_of(param: str = "%s") -> str:
    """``= ANY(...)`` of a list given as one JSON array (``json_param``): as a text array,
    psycopg quoted each element in Python on the ledger thread (1.2 µs an ID against 0.1);
    the array is made once, before the key's index is searched with it."""
    return f"= ANY(ARRAY(SELECT jsonb_array_elements_text({param}::jsonb)))"


# Every table of the SQLite ledger, with the same columns, plus what sharing needs: a run's
# lease (``heartbeat_at``, renewed while it lives, and ``lease_s``, its term: the run holding it
# sets it, every other run judges the lease by it) and its process (boot, PID namespace, PID:
# a run on the same machine can tell it died), the attempt log's order (``seq``) and each
# order's request ids unique (a transaction retried after a lost COMMIT writes nothing twice).
# The orders have no index but their key, and their pages are half filled by inserts: an
# order's result then rewrites its row on its own page without touching an index (a heap-only
# tuple update, HOT), where an index of outcomes took two entries per order (pending, then
# final) and every result a new entry in the key's index too. What reads orders by outcome
# (`report --outcome`, `retry`'s candidates, by key order) walks the table or its key.
SCHEMA = """
CREATE TABLE IF NOT EXISTS ledger_schema (version integer NOT NULL);
CREATE TABLE IF NOT EXISTS orders (
    order_id    text PRIMARY KEY,
    outcome     text NOT NULL,
    http_status integer,
    error_code  text,
    message     text,
    attempts    integer NOT NULL DEFAULT 0,
    run_id      text NOT NULL,
    created_at  text NOT NULL,
    updated_at  text NOT NULL
) WITH (fillfactor = 50);
CREATE TABLE IF NOT EXISTS runs (
    run_id       text PRIMARY KEY,
    command      text NOT NULL,
    base_url     text,
    started_at   text NOT NULL,
    finished_at  text,
    exit_code    integer,
    summary      text,
    operator     text,
    host         text,
    reason       text,
    ticket       text,
    details      text,
    heartbeat_at timestamptz,
    process      text,
    lease_s      double precision
);
CREATE TABLE IF NOT EXISTS attempts (
    seq         bigserial PRIMARY KEY,
    run_id      text NOT NULL,
    order_id    text NOT NULL,
    attempt     integer NOT NULL,
    method      text NOT NULL,
    sent_at     text NOT NULL,
    latency_ms  double precision,
    http_status integer,
    error_code  text,
    message     text,
    request_id  text NOT NULL,
    response_id text
);
CREATE UNIQUE INDEX IF NOT EXISTS attempts_by_order ON attempts (order_id, request_id);
CREATE TABLE IF NOT EXISTS control (
    run_id      text NOT NULL,
    key         text NOT NULL,
    value       text NOT NULL,
    updated_at  text NOT NULL,
    PRIMARY KEY (run_id, key)
);
"""

# Steps from each earlier version of a PostgreSQL ledger to the next (3 was the first).
MIGRATIONS: dict[int, str] = {
    3: "ALTER TABLE runs ADD COLUMN IF NOT EXISTS lease_s double precision;",
    4: "SELECT 1;",  # schema 5 compacts the SQLite attempt log only
    # 6: one index of the attempt log where there were two (by order, and its request ids
    # unique): (order, request id) unique finds an order's history and keeps a transaction
    # retried after a lost COMMIT from writing twice (the SQLite orders are compacted too)
    5: """
DROP INDEX IF EXISTS attempts_by_order;
CREATE UNIQUE INDEX attempts_by_order ON attempts (order_id, request_id);
ALTER TABLE attempts DROP CONSTRAINT IF EXISTS attempts_request_id_key;
""",
    # 7: results rewrite their order's row in place (see SCHEMA); pages written from now on
    6: """
DROP INDEX IF EXISTS orders_by_outcome;
ALTER TABLE orders SET (fillfactor = 50);
""",
}

# A claim's IDs as one JSON array (orjson, in C): as a text array, psycopg quoted each ID in
# Python on the ledger thread, holding the interpreter (1.2 µs an ID against 0.1).
INSERT_NEW = (
    "INSERT INTO orders (order_id, outcome, attempts, run_id, created_at, updated_at) "
    "SELECT i, 'pending', 0, %s, %s, %s FROM jsonb_array_elements_text(%s::jsonb) AS i "
    "ORDER BY i ON CONFLICT (order_id) DO NOTHING RETURNING order_id"
)
OUTCOMES_OF = f"SELECT order_id, outcome FROM orders WHERE order_id {any_of()}"
# Orders a claim takes from earlier runs: `pending` under this run (so that another live run
# finds them held, not left by a run that ended: it sent them too), their last answer kept; a
# final one (--force) keeps its outcome until answered again.
TAKE = (
    "UPDATE orders SET run_id = %s, updated_at = %s, outcome = CASE WHEN outcome IN "
    f"({FINAL_SQL}) THEN outcome ELSE 'pending' END WHERE order_id {any_of()}"
)

UPSERT = f"""
INSERT INTO orders (order_id, outcome, http_status, error_code, message, attempts, run_id,
                    created_at, updated_at)
SELECT DISTINCT ON (r->>0) r->>0, r->>1, (r->>2)::int, r->>3, r->>4, coalesce((r->>5)::int, 0),
       %(run)s, %(at)s, %(at)s
FROM jsonb_array_elements(%(rows)s::jsonb) WITH ORDINALITY AS a(r, n)
ORDER BY r->>0, r->>1 = 'pending', n DESC
ON CONFLICT (order_id) DO UPDATE SET
    outcome = excluded.outcome, http_status = excluded.http_status,
    error_code = excluded.error_code, message = excluded.message, attempts = excluded.attempts,
    run_id = excluded.run_id, updated_at = excluded.updated_at
WHERE excluded.outcome <> 'pending' OR orders.outcome NOT IN ({FINAL_SQL})
"""

# The attempt rows as one JSON array of arrays (ATTEMPT_COLUMNS order; serialised in C by
# orjson): as one text array per column, psycopg quoted each of their elements in Python (two
# thirds of a batch's client time).
TYPES = ("text", "text", "int", "text", "float8", "float8", "int", "text", "text", "text", "text")
ATTEMPTS = (
    f"INSERT INTO attempts ({', '.join(ATTEMPT_COLUMNS)}) SELECT "
    + ", ".join(
        "to_char(to_timestamp((r->>4)::float8) AT TIME ZONE 'UTC', "
        '\'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"\')'
        if k == ATTEMPT_COLUMNS.index("sent_at")
        else (f"r->>{k}" if t == "text" else f"(r->>{k})::{t}")
        for k, t in enumerate(TYPES)
    )
    + " FROM jsonb_array_elements(%s::jsonb) WITH ORDINALITY AS a(r, n) ORDER BY n"
    + " ON CONFLICT (order_id, request_id) DO NOTHING"
)

LOCK_HELD = f"""
SELECT o.order_id, o.outcome, o.run_id, o.updated_at,
       o.outcome = 'retryable_failed' OR
           (o.outcome = 'pending' AND (o.attempts > 0 OR r.finished_at IS NULL)),
       o.outcome = 'pending' AND r.finished_at IS NULL
           AND r.heartbeat_at > now() - make_interval(secs => coalesce(r.lease_s, %(idle)s)),
       o.outcome = 'retryable_failed' AND o.run_id <> %(run)s
           AND o.updated_at >= (SELECT started_at FROM runs WHERE run_id = %(run)s)
FROM orders o LEFT JOIN runs r ON r.run_id = o.run_id
WHERE o.order_id {any_of("%(ids)s")} AND (o.run_id = %(run)s OR %(force)s
                                     OR o.outcome NOT IN ({FINAL_SQL}))
FOR UPDATE OF o SKIP LOCKED
"""

_CSV = ", ".join(CSV_COLUMNS)
_ATTEMPTS = ", ".join(ATTEMPT_COLUMNS)

STATEMENTS = common.Statements(
    outcomes=common.OUTCOMES,
    outcomes_of="SELECT outcome, COUNT(*) FROM orders WHERE outcome = %s GROUP BY outcome",
    codes=common.CODES,
    codes_of="SELECT error_code, COUNT(*) FROM orders WHERE outcome = %s AND error_code IS NOT "
    "NULL GROUP BY error_code",
    run_outcomes="SELECT outcome, COUNT(*) FROM orders WHERE run_id = %s GROUP BY outcome",
    run_codes="SELECT error_code, COUNT(*) FROM orders WHERE run_id = %s AND error_code IS NOT "
    "NULL GROUP BY error_code",
    rows=common.ROWS,
    rows_with=f"SELECT {_CSV} FROM orders WHERE outcome = %s ORDER BY order_id",
    rows_of=f"SELECT {_CSV} FROM orders WHERE order_id {any_of()} ORDER BY order_id",
    timeline=common.TIMELINE,
    last_run=common.LAST_RUN,
    still_mine="SELECT order_id FROM orders WHERE run_id = %s AND outcome = 'pending' AND "
    f"order_id {any_of()}",
    existing=f"{common.EXISTING_OF} WHERE o.order_id {any_of()}",
    candidates=f"SELECT order_id FROM orders WHERE outcome {any_of()} AND order_id > %s "
    "ORDER BY order_id LIMIT %s",
    target="SELECT base_url FROM runs WHERE base_url IS NOT NULL AND (finished_at IS NULL "
    "OR coalesce((summary::jsonb ->> 'requests')::bigint, 1) > 0) ORDER BY started_at LIMIT 1",
    end_run="UPDATE runs SET finished_at = %s, exit_code = %s, summary = %s WHERE run_id = %s",
    recent_sends="SELECT extract(epoch FROM sent_at::timestamptz)::float8, http_status, run_id "
    "FROM attempts ORDER BY seq DESC LIMIT %s",
    commands="SELECT key, value FROM control WHERE run_id = %s AND key <> 'status'",
    runs=common.RUNS,
    run_requests="SELECT COUNT(*) FROM attempts WHERE run_id = %s",
    history=f"{common.HISTORY_OF} WHERE a.order_id = %s ORDER BY a.sent_at, a.seq",
    attempts=f"SELECT {_ATTEMPTS} FROM attempts WHERE (%s::text IS NULL OR sent_at >= %s) "
    "AND (%s::text IS NULL OR run_id = %s) ORDER BY seq",
    run_orders=f"SELECT {_CSV} FROM orders WHERE run_id = %s OR order_id IN "
    "(SELECT order_id FROM attempts WHERE run_id = %s) ORDER BY order_id",
    prune="DELETE FROM attempts WHERE sent_at < %s",
)

BEGIN_RUN = (
    "INSERT INTO runs (run_id, command, base_url, started_at, operator, host, reason, ticket, "
    "details, heartbeat_at, process, lease_s) VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,now(),%s,%s) "
    "ON CONFLICT (run_id) DO NOTHING"
)
GONE_HERE = (
    "SELECT run_id, process FROM runs WHERE finished_at IS NULL AND heartbeat_at IS NOT NULL "
    "AND starts_with(process, %s) AND run_id <> %s"
)
PUBLISH = (
    "INSERT INTO control (run_id, key, value, updated_at) VALUES (%s, 'status', %s, %s) "
    "ON CONFLICT (run_id, key) DO UPDATE SET value = excluded.value, "
    "updated_at = excluded.updated_at"
)
