"""The SQLite ledger's SQL text: its schema, its batch statements, and the shared behaviour's
statements in SQLite's dialect (``?`` placeholders; a list is one JSON parameter)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Sequence

import worker.ledger.statements as common
from worker.ledger.schema import (
    ATTEMPT_COLUMNS,
    CSV_COLUMNS,
    FINAL_SQL,
    ORDER_COLUMNS,
    SCHEMA_VERSION,
)


def _uuid_text(column: str) -> str:
    """A UUID kept as its 16 bytes, read as its text (any other value as it was written)."""
    h = f"lower(hex({column}))"
    parts = "||'-'||".join(f"substr({h}, {a}, {n})" for a, n in ((1, 8), (9, 4), (13, 4), (17, 4)))
    return (
        f"CASE WHEN typeof({column}) = 'blob' THEN {parts}||'-'||substr({h}, 21) ELSE {column} END"
    )


def _iso(ms: str) -> str:
    """Integer milliseconds since the epoch as the ledger's time text (ISO-8601, milliseconds,
    ``Z``: what ``iso_utc`` writes)."""
    return f"strftime('%Y-%m-%dT%H:%M:%fZ', {ms} / 1000.0, 'unixepoch')"


def _ms_of(iso: str) -> str:
    """The ledger's time text as integer milliseconds since the epoch (NULL if not a time)."""
    return f"CAST(round((julianday({iso}) - 2440587.5) * 86400000.0) AS INTEGER)"


# The attempt log as it is stored (``attempt_log``: the run as an integer key into
# ``run_keys``, the time in integer milliseconds since the epoch, a UUID as 16 bytes) and as it
# reads (the view ``attempts``, with the columns and the text of schema 4, and ``seq``): each
# column of ATTEMPT_COLUMNS as an expression over ``attempt_log a`` joined to ``run_keys k``.
SENT_AT = _iso("a.sent_ms")
READABLE = (
    "k.run_id",
    "a.order_id",
    "a.attempt",
    "a.method",
    SENT_AT,
    "a.latency_ms",
    "a.http_status",
    "a.error_code",
    "a.message",
    _uuid_text("a.request_id"),
    _uuid_text("a.response_id"),
)
_LOG = "attempt_log a JOIN run_keys k ON k.key = a.run"
STORED_COLUMNS = ("run", *ATTEMPT_COLUMNS[1:4], "sent_ms", *ATTEMPT_COLUMNS[5:])
_AS_READ = ", ".join(f"{e} AS {c}" for c, e in zip(ATTEMPT_COLUMNS, READABLE, strict=True))
_AS_READ += (
    ", a.rowid AS seq"  # the order written, as PostgreSQL's attempts.seq (a view has no rowid)
)

# The orders as they are stored (``order_state``: the run as its key in ``run_keys``, the times
# in integer milliseconds since the epoch) and as they read (the view ``orders``, with the
# columns and the text of schema 5).
_ORDER_STORED = ORDER_COLUMNS[:6]  # as they read; the run and the times are stored compact
_ORDER_READ = (
    *(f"o.{c}" for c in _ORDER_STORED),
    # looked up only where it is read (a join was made for every row, even to count outcomes)
    "(SELECT run_id FROM run_keys WHERE key = o.run)",
    _iso("o.created_ms"),
    _iso("o.updated_ms"),
)
_ORDERS_AS_READ = ", ".join(f"{e} AS {c}" for c, e in zip(ORDER_COLUMNS, _ORDER_READ, strict=True))
ORDERS_VIEW = f"CREATE VIEW IF NOT EXISTS orders AS SELECT {_ORDERS_AS_READ} FROM order_state o;"
_KEY_OF_NEW = "(SELECT key FROM run_keys WHERE run_id = NEW.run_id)"
_NEW_KEY = "INSERT OR IGNORE INTO run_keys (run_id) VALUES (NEW.run_id);"
# A person's INSERT, UPDATE or DELETE on either view (a runbook's repair, a test's set-up)
# changes the stored rows, as it changed the tables of schema 5.
WRITABLE_VIEWS = f"""
CREATE TRIGGER IF NOT EXISTS orders_insert INSTEAD OF INSERT ON orders BEGIN
    {_NEW_KEY}
    INSERT INTO order_state ({", ".join(_ORDER_STORED)}, run, created_ms, updated_ms)
    VALUES (NEW.order_id, NEW.outcome, NEW.http_status, NEW.error_code, NEW.message,
            coalesce(NEW.attempts, 0), {_KEY_OF_NEW}, {_ms_of("NEW.created_at")},
            {_ms_of("NEW.updated_at")});
END;
CREATE TRIGGER IF NOT EXISTS orders_update INSTEAD OF UPDATE ON orders BEGIN
    {_NEW_KEY}
    UPDATE order_state SET order_id = NEW.order_id, outcome = NEW.outcome,
        http_status = NEW.http_status, error_code = NEW.error_code, message = NEW.message,
        attempts = NEW.attempts, run = {_KEY_OF_NEW}, created_ms = {_ms_of("NEW.created_at")},
        updated_ms = {_ms_of("NEW.updated_at")}
    WHERE order_id = OLD.order_id;
END;
CREATE TRIGGER IF NOT EXISTS orders_delete INSTEAD OF DELETE ON orders BEGIN
    DELETE FROM order_state WHERE order_id = OLD.order_id;
END;
CREATE TRIGGER IF NOT EXISTS attempts_insert INSTEAD OF INSERT ON attempts BEGIN
    {_NEW_KEY}
    INSERT INTO attempt_log ({", ".join(STORED_COLUMNS)})
    VALUES ({_KEY_OF_NEW}, NEW.order_id, NEW.attempt, NEW.method, {_ms_of("NEW.sent_at")},
            NEW.latency_ms, NEW.http_status, NEW.error_code, NEW.message, NEW.request_id,
            NEW.response_id);
END;
CREATE TRIGGER IF NOT EXISTS attempts_delete INSTEAD OF DELETE ON attempts BEGIN
    DELETE FROM attempt_log WHERE rowid = OLD.seq;
END;
"""

SCHEMA = f"""
CREATE TABLE IF NOT EXISTS order_state (
    order_id    TEXT PRIMARY KEY,
    outcome     TEXT NOT NULL,
    http_status INTEGER,
    error_code  TEXT,
    message     TEXT,
    attempts    INTEGER NOT NULL DEFAULT 0,
    run         INTEGER NOT NULL,
    created_ms  INTEGER NOT NULL,
    updated_ms  INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS orders_by_outcome ON order_state(outcome, order_id);
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
CREATE TABLE IF NOT EXISTS run_keys (
    key         INTEGER PRIMARY KEY,
    run_id      TEXT NOT NULL UNIQUE
);
CREATE TABLE IF NOT EXISTS attempt_log (
    run         INTEGER NOT NULL,
    order_id    TEXT NOT NULL,
    attempt     INTEGER NOT NULL,
    method      TEXT NOT NULL,
    sent_ms     INTEGER NOT NULL,
    latency_ms  REAL,
    http_status INTEGER,
    error_code  TEXT,
    message     TEXT,
    request_id  BLOB NOT NULL,
    response_id BLOB
);
CREATE INDEX IF NOT EXISTS attempt_log_by_order ON attempt_log(order_id);
CREATE VIEW IF NOT EXISTS attempts AS SELECT {_AS_READ} FROM {_LOG};
{ORDERS_VIEW}
{WRITABLE_VIEWS}
CREATE TABLE IF NOT EXISTS control (
    run_id      TEXT NOT NULL,
    key         TEXT NOT NULL,
    value       TEXT NOT NULL,
    updated_at  TEXT NOT NULL,
    PRIMARY KEY (run_id, key)
) WITHOUT ROWID;
PRAGMA user_version = {SCHEMA_VERSION};
"""

# Schema 5 keeps the attempt log compact, schema 6 the orders: a ledger of an earlier schema has
# its table ``attempts`` (before 5) and ``orders`` (before 6) set aside, the new tables, views
# and triggers made (SCHEMA), the rows copied (a request id stays text: SQLite 3.40 has no
# unhex()), and the old tables dropped; one transaction.
COMPACT_ATTEMPT_LOG = """
DROP INDEX IF EXISTS attempts_by_order;
ALTER TABLE attempts RENAME TO attempts_schema4;
"""
COPY_ATTEMPT_LOG = f"""
INSERT OR IGNORE INTO run_keys (run_id) SELECT run_id FROM attempts_schema4 ORDER BY rowid;
INSERT INTO attempt_log ({", ".join(STORED_COLUMNS)})
SELECT k.key, a.order_id, a.attempt, a.method, coalesce({_ms_of("a.sent_at")}, 0),
       a.latency_ms, a.http_status, a.error_code, a.message, a.request_id, a.response_id
FROM attempts_schema4 a JOIN run_keys k ON k.run_id = a.run_id ORDER BY a.rowid;
DROP TABLE attempts_schema4;
"""
COMPACT_ORDERS = """
DROP INDEX IF EXISTS orders_by_outcome;
ALTER TABLE orders RENAME TO orders_schema5;
"""
COPY_ORDERS = f"""
INSERT OR IGNORE INTO run_keys (run_id) SELECT DISTINCT run_id FROM orders_schema5;
INSERT INTO order_state ({", ".join(_ORDER_STORED)}, run, created_ms, updated_ms)
SELECT {", ".join(f"o.{c}" for c in _ORDER_STORED)}, k.key,
       coalesce({_ms_of("o.created_at")}, 0), coalesce({_ms_of("o.updated_at")}, 0)
FROM orders_schema5 o JOIN run_keys k ON k.run_id = o.run_id;
DROP TABLE orders_schema5;
"""

# The batch forms: one statement per batch, its rows in one JSON parameter, so that the whole
# batch runs inside SQLite (which releases the GIL) instead of row by row in Python.
# ?1: JSON array of order IDs; ?2: the run's key; ?3: the time, integer milliseconds.
# An order an earlier run left (`retryable_failed`) is marked `pending` under this run like a
# new one, its last answer kept; a final one (--force) keeps its outcome until answered again.
CLAIM_BATCH = f"""
INSERT INTO order_state (order_id, outcome, attempts, run, created_ms, updated_ms)
SELECT value, 'pending', 0, ?2, ?3, ?3 FROM json_each(?1) WHERE true
ON CONFLICT (order_id) DO UPDATE SET run = excluded.run, updated_ms = excluded.updated_ms,
    outcome = CASE WHEN order_state.outcome IN ({FINAL_SQL}) THEN order_state.outcome
                   ELSE 'pending' END
"""

# ?1: JSON array of results, each an array (order_id, outcome, http_status, error_code,
# message, attempts: ``base.result_rows``); ?2: the run's key; ?3: the time, integer
# milliseconds.
UPSERT_BATCH = f"""
INSERT INTO order_state (order_id, outcome, http_status, error_code, message, attempts, run,
                         created_ms, updated_ms)
SELECT value ->> 0, value ->> 1, value ->> 2, value ->> 3, value ->> 4, value ->> 5, ?2, ?3, ?3
FROM json_each(?1) WHERE true
ON CONFLICT (order_id) DO UPDATE SET
    outcome = excluded.outcome, http_status = excluded.http_status,
    error_code = excluded.error_code, message = excluded.message, attempts = excluded.attempts,
    run = excluded.run, updated_ms = excluded.updated_ms
WHERE excluded.outcome != 'pending' OR order_state.outcome NOT IN ({FINAL_SQL})
"""

CONTROL_UPSERT = (
    "INSERT OR REPLACE INTO control (run_id, key, value, updated_at) VALUES (?, ?, ?, ?)"
)

BEGIN_RUN = (
    "INSERT INTO runs (run_id, command, base_url, started_at, operator, host, reason, ticket, "
    "details) VALUES (?,?,?,?,?,?,?,?,?)"
)

# Attempt rows in one INSERT statement: 128 (1,408 parameters), or for what is left of a batch
# a power of two (64, 32, ..., 1). One statement text per count of rows, each kept prepared in
# the connection's statement cache: a statement for every batch size up to 200 filled the cache
# with up to 128 large statements (20 MiB more over a 100,000-order run).
ROWS_PER_INSERT = 128
_ONE_ROW = "(" + ",".join("?" * len(STORED_COLUMNS)) + ")"
_INSERT = f"INSERT INTO attempt_log ({', '.join(STORED_COLUMNS)}) VALUES "
_INSERTS = {n: _INSERT + ",".join([_ONE_ROW] * n) for n in (1 << k for k in range(8))}
RUN_KEY = "SELECT key FROM run_keys WHERE run_id = ?"
NEW_RUN_KEY = "INSERT OR IGNORE INTO run_keys (run_id) VALUES (?)"


def insert_attempts(
    rows: Sequence[Sequence[object]], run_key: Callable[[str], int]
) -> Iterator[tuple[str, list[object]]]:
    """(SQL, parameters) appending these attempt rows (in ATTEMPT_COLUMNS order, the time in
    seconds since the epoch) as they are stored: ROWS_PER_INSERT rows a statement, then the
    rest in powers of two (fewer statements to step through than one per row, and no more than
    eight statement texts); ``run_key`` gives a run's integer key."""
    start = 0
    while start < len(rows):
        left = len(rows) - start
        count = ROWS_PER_INSERT if left >= ROWS_PER_INSERT else 1 << (left.bit_length() - 1)
        chunk = rows[start : start + count]
        start += count
        values: list[object] = []
        for run_id, order_id, attempt, method, sent_at, *answer, request_id, response_id in chunk:
            values += (run_key(str(run_id)), order_id, attempt, method, _ms(sent_at), *answer)
            values += (_compact(request_id), _compact(response_id))
        yield _INSERTS[count], values


def _ms(sent_at: object) -> int:
    """Integer milliseconds since the epoch of seconds since the epoch."""
    return round(float(sent_at) * 1000)  # type: ignore[arg-type]


def _compact(value: object) -> object:
    """A UUID in its canonical text (lowercase, 8-4-4-4-12) as its 16 bytes, which the view
    reads back as that text; any other value as it is. (On the ledger's thread, holding the
    GIL: the test is the cheap one, about 0.4 µs, not uuid.UUID's parse.)"""
    if isinstance(value, str) and len(value) == 36 and value[8] == value[13] == value[18] == "-":
        digits = value.replace("-", "")
        if value[23] != "-" or len(digits) != 32:
            return value
        try:
            raw = bytes.fromhex(digits)
        except ValueError:
            return value
        if raw.hex() == digits:
            return raw
    return value


_IN = "IN (SELECT value FROM json_each(?))"  # a list as one JSON parameter
_CSV = ", ".join(CSV_COLUMNS)
_READABLE = ", ".join(READABLE)

STATEMENTS = common.Statements(
    outcomes=common.OUTCOMES,
    outcomes_of="SELECT outcome, COUNT(*) FROM orders WHERE outcome = ? GROUP BY outcome",
    codes=common.CODES,
    codes_of="SELECT error_code, COUNT(*) FROM orders WHERE outcome = ? AND error_code IS NOT "
    "NULL GROUP BY error_code",
    run_outcomes=f"SELECT outcome, COUNT(*) FROM order_state WHERE run = ({RUN_KEY}) "
    "GROUP BY outcome",
    run_codes=f"SELECT error_code, COUNT(*) FROM order_state WHERE run = ({RUN_KEY}) AND "
    "error_code IS NOT NULL GROUP BY error_code",
    rows=common.ROWS,
    rows_with=f"SELECT {_CSV} FROM orders WHERE outcome = ? ORDER BY order_id",
    rows_of=f"SELECT {_CSV} FROM orders WHERE order_id {_IN} ORDER BY order_id",
    timeline="SELECT strftime('%Y-%m-%dT%H:%M:%S', s, 'unixepoch'), outcome, n FROM (SELECT "
    "updated_ms / 1000 AS s, outcome, COUNT(*) AS n FROM order_state WHERE outcome <> 'pending' "
    "GROUP BY 1, 2) ORDER BY 1",  # each second formatted once, not each order
    last_run=common.LAST_RUN,
    still_mine=f"SELECT order_id FROM order_state WHERE run = ({RUN_KEY}) AND "
    f"outcome = 'pending' AND order_id {_IN}",
    existing=f"{common.EXISTING_OF} WHERE o.order_id {_IN}",
    candidates=f"SELECT order_id FROM orders WHERE outcome {_IN} AND order_id > ? "
    "ORDER BY order_id LIMIT ?",
    target="SELECT base_url FROM runs WHERE base_url IS NOT NULL AND (finished_at IS NULL "
    "OR coalesce(json_extract(summary, '$.requests'), 1) > 0) ORDER BY started_at LIMIT 1",
    end_run="UPDATE runs SET finished_at = ?, exit_code = ?, summary = ? WHERE run_id = ?",
    recent_sends=f"SELECT a.sent_ms / 1000.0, a.http_status, k.run_id FROM {_LOG} "
    "ORDER BY a.rowid DESC LIMIT ?",
    commands="SELECT key, value FROM control WHERE run_id = ? AND key != 'status'",
    runs=common.RUNS,
    run_requests=f"SELECT COUNT(*) FROM attempt_log WHERE run = ({RUN_KEY})",
    history=f"SELECT {_READABLE}, r.command, r.operator, r.reason, r.ticket FROM {_LOG} "
    "LEFT JOIN runs r ON r.run_id = k.run_id WHERE a.order_id = ? ORDER BY a.sent_ms, a.rowid",
    # a time given as text is converted once, not every row's time formatted to compare
    attempts=f"SELECT {_READABLE} FROM {_LOG} WHERE (? IS NULL OR a.sent_ms >= {_ms_of('?')}) "
    "AND (? IS NULL OR k.run_id = ?) ORDER BY a.rowid",
    run_orders=f"SELECT {_CSV} FROM orders WHERE order_id IN (SELECT order_id FROM order_state "
    f"WHERE run = ({RUN_KEY}) UNION SELECT order_id FROM attempt_log WHERE run = ({RUN_KEY})) "
    "ORDER BY order_id",
    prune=f"DELETE FROM attempt_log WHERE sent_ms < {_ms_of('?')}",
)

# A ledger of schema 5 read as it is (a read-only copy, which cannot be upgraded): the
# statements above that read order_state, in the form that reads schema 5's table `orders` (and
# this schema's view as well).
_OF_RUN = "FROM orders WHERE run_id = ?"
READ_AS_SCHEMA_5 = dataclasses.replace(
    STATEMENTS,
    run_outcomes=f"SELECT outcome, COUNT(*) {_OF_RUN} GROUP BY outcome",
    run_codes=f"SELECT error_code, COUNT(*) {_OF_RUN} AND error_code IS NOT NULL "
    "GROUP BY error_code",
    still_mine=f"SELECT order_id {_OF_RUN} AND outcome = 'pending' AND order_id {_IN}",
    timeline=common.TIMELINE,
    run_orders=f"SELECT {_CSV} {_OF_RUN} OR order_id IN "
    f"(SELECT order_id FROM attempt_log WHERE run = ({RUN_KEY})) ORDER BY order_id",
)
