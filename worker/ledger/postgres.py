"""PostgreSQL plumbing of the ledger: a small pool of connections (psycopg 3), each call one
transaction retried on a fresh connection when the server drops one (a restart, a
``pg_terminate_backend``, a failover) or when two runs' claims deadlock; the schema, created on
first use and versioned. SQL written for SQLite's ``?`` placeholders (the shared reads) runs
here as it is."""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import psycopg
import psycopg.errors
from psycopg_pool import ConnectionPool, PoolTimeout

from worker.domain.errors import LedgerError
from worker.domain.location import PostgresUrl
from worker.ledger.schema import SCHEMA_VERSION

T = TypeVar("T")

# The pool logs each failed connection attempt; the ledger's own error says it once.
logging.getLogger("psycopg.pool").setLevel(logging.CRITICAL)

CONNECT_TIMEOUT_S = 10
TRIES = 4  # one call: the first try and three more on a fresh connection
_RETRIED = (psycopg.OperationalError, psycopg.errors.DeadlockDetected)
_names = itertools.count(1)

# Every table of the SQLite ledger, with the same columns, plus what sharing needs: a run's
# lease (``heartbeat_at``, renewed while it lives, and ``lease_s``, its term: the run holding it
# sets it, every other run judges the lease by it) and its process (boot, PID namespace, PID:
# a run on the same machine can tell it died), the attempt log's order (``seq``) and its
# request ids unique (a transaction retried after a lost COMMIT writes nothing twice).
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
);
CREATE INDEX IF NOT EXISTS orders_by_outcome ON orders (outcome, order_id);
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
    request_id  text NOT NULL UNIQUE,
    response_id text
);
CREATE INDEX IF NOT EXISTS attempts_by_order ON attempts (order_id);
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
}


def translate(sql: str) -> str:
    """SQLite's ``?`` placeholders as psycopg's ``%s`` (a literal ``%`` doubled)."""
    return sql.replace("%", "%%").replace("?", "%s")


class PgDb:
    """The ledger's connections: ``run`` one transaction, ``execute`` a query (shared SQL)."""

    def __init__(self, url: PostgresUrl, *, size: int = 3) -> None:
        self.url = url
        self.pool = ConnectionPool(
            url.dsn,
            min_size=1,
            max_size=size,
            open=False,
            check=ConnectionPool.check_connection,
            kwargs={
                "connect_timeout": CONNECT_TIMEOUT_S,
                "fallback_application_name": "cancel-orders",
            },
            timeout=CONNECT_TIMEOUT_S * 2,
            name="ledger",
        )
        try:  # one connection first: a server that refuses is named at once, not after retries
            psycopg.connect(url.dsn, connect_timeout=CONNECT_TIMEOUT_S).close()
            self.pool.open(wait=True, timeout=CONNECT_TIMEOUT_S)
        except (psycopg.Error, PoolTimeout) as exc:
            self.pool.close()
            why = _first_line(exc) if isinstance(exc, psycopg.Error) else "timed out"
            raise LedgerError(f"{url}: cannot connect to PostgreSQL: {why}") from None

    def close(self) -> None:
        """Close every connection."""
        self.pool.close()

    def run(self, work: Callable[[psycopg.Connection[Any]], T]) -> T:
        """``work(connection)`` in one transaction, committed at its end; tried again on a
        fresh connection when the server dropped the connection or a deadlock aborted it
        (every write of the ledger can be repeated: upserts, and appends keyed by request)."""
        for attempt in range(TRIES):
            try:
                with self.pool.connection() as conn:
                    return work(conn)
            except _RETRIED as exc:
                if attempt == TRIES - 1:
                    raise LedgerError(f"{self.url}: cannot write the ledger: {exc}") from None
                time.sleep(0.05 * 2**attempt)
            except (psycopg.Error, PoolTimeout) as exc:
                raise LedgerError(f"{self.url}: the ledger failed: {_first_line(exc)}") from None
        raise AssertionError("unreachable")

    def execute(self, sql: str, args: Sequence[object] = ()) -> Rows:
        """A query in SQLite's dialect (``?``); its rows, all fetched (small results)."""
        text = translate(sql)
        return Rows(self.run(lambda conn: conn.execute(text, args).fetchall()))

    def stream(self, sql: str, args: Sequence[object] = ()) -> Iterator[tuple[Any, ...]]:
        """A query's rows through a server-side cursor, 2,000 at a time (a report of millions
        of orders holds one page in memory)."""
        text = translate(sql)
        try:
            with self.pool.connection() as conn, conn.cursor(name=f"rows{next(_names)}") as cur:
                cur.itersize = 2000
                cur.execute(text, args)
                yield from cur
        except (psycopg.Error, PoolTimeout) as exc:
            raise LedgerError(f"{self.url}: cannot read the ledger: {_first_line(exc)}") from None

    def version(self) -> int | None:
        """The schema's version; None when the database holds no ledger yet."""

        return self.run(_version)

    def prepare(self, *, readonly: bool) -> None:
        """Check the schema's version; create or migrate it (even to read: it is additive)."""
        version = self.version()
        if version is None and readonly:
            raise LedgerError(f"{self.url}: no ledger in this database (a run creates it)")
        if version is not None and version > SCHEMA_VERSION:
            raise LedgerError(
                f"{self.url}: ledger schema {version} is newer than this tool ({SCHEMA_VERSION})"
            )
        if version != SCHEMA_VERSION:
            self.create()

    def create(self) -> None:
        """Create the schema, or bring an earlier one to this version, in place (one run at a
        time: an advisory lock of the schema)."""

        def build(conn: psycopg.Connection[Any]) -> None:
            conn.execute(
                "SELECT pg_advisory_xact_lock(hashtext('cancel-orders:' || current_schema()))"
            )
            version = _version(conn)
            if version is not None and version > SCHEMA_VERSION:
                return  # refused by the caller, which names both versions
            while version is not None and version < SCHEMA_VERSION:
                conn.execute(MIGRATIONS[version].encode())
                version += 1
            conn.execute(SCHEMA.encode())
            conn.execute("DELETE FROM ledger_schema")
            conn.execute("INSERT INTO ledger_schema VALUES (%s)", (SCHEMA_VERSION,))

        self.run(build)


class Rows:
    """Fetched rows with the part of sqlite3.Cursor the shared reads use."""

    def __init__(self, rows: list[tuple[Any, ...]]) -> None:
        self._rows = rows

    def __iter__(self) -> Iterator[tuple[Any, ...]]:
        return iter(self._rows)

    def fetchone(self) -> tuple[Any, ...] | None:
        return self._rows[0] if self._rows else None

    def fetchall(self) -> list[tuple[Any, ...]]:
        return self._rows


def _version(conn: psycopg.Connection[Any]) -> int | None:
    if conn.execute("SELECT to_regclass('ledger_schema')").fetchone() == (None,):
        return None
    row = conn.execute("SELECT max(version) FROM ledger_schema").fetchone()
    return None if row is None or row[0] is None else int(row[0])


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
