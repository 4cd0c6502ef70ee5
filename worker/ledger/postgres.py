"""PostgreSQL plumbing of the ledger: a small pool of connections (psycopg 3), each call one
transaction retried on a fresh connection when the server drops one (a restart, a
``pg_terminate_backend``, a failover) or when two runs' claims deadlock; the schema, created on
first use and versioned."""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import psycopg
import psycopg.errors
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import ConnectionPool, PoolTimeout

from worker.domain.errors import LedgerError
from worker.domain.location import PostgresUrl
from worker.ledger.pg_sql import MIGRATIONS, SCHEMA
from worker.ledger.schema import SCHEMA_VERSION

T = TypeVar("T")

# The pool logs each failed connection attempt; the ledger's own error says it once.
logging.getLogger("psycopg.pool").setLevel(logging.CRITICAL)

CONNECT_TIMEOUT_S = 10
TRIES = 4  # one call: the first try and three more on a fresh connection
GONE_WAIT_S = 2.0  # the wait for a connection once the server could not be reached (below)
_RETRIED = (psycopg.OperationalError, psycopg.errors.DeadlockDetected)
_names = itertools.count(1)


class PgDb:
    """The ledger's connections: ``run`` one transaction, ``fetch`` or ``stream`` a query's
    rows."""

    def __init__(self, url: PostgresUrl, *, size: int = 3) -> None:
        self.url = url
        connect_s = connect_timeout(url.dsn)
        self.pool = ConnectionPool(
            url.dsn,
            min_size=1,
            max_size=size,
            open=False,
            check=ConnectionPool.check_connection,
            kwargs={"connect_timeout": connect_s, "fallback_application_name": "cancel-orders"},
            timeout=connect_s * 2,
            name="ledger",
        )
        # when the last call found no connection in any of its waits, and what it raised
        self._gone: tuple[float, str] | None = None
        try:  # one connection first: a server that refuses is named at once, not after retries
            psycopg.connect(url.dsn, connect_timeout=connect_s).close()
            self.pool.open(wait=True, timeout=connect_s)
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
        (every write of the ledger can be repeated: upserts, and appends keyed by request).

        A call that found no connection in any of its tries (the pool tries to connect for
        the whole of each wait: a failover has over a minute to end) says the server is gone:
        the calls after it wait GONE_WAIT_S, once, until one succeeds, and those within
        GONE_WAIT_S of a failed one fail at once with its error. A run stopping for it writes
        what it can and ends in seconds (its calls run one after the other: eighty seconds
        each were many minutes)."""
        for attempt in range(TRIES):
            gone = self._still_gone()
            try:
                with self.pool.connection(GONE_WAIT_S if gone else None) as conn:
                    done = work(conn)
            except PoolTimeout as exc:
                if gone or attempt == TRIES - 1:
                    raise self._unreachable(exc, attempt + 1) from None
                time.sleep(0.05 * 2**attempt)
            except _RETRIED as exc:
                if attempt == TRIES - 1:
                    raise LedgerError(f"{self.url}: cannot write the ledger: {exc}") from None
                time.sleep(0.05 * 2**attempt)
            except psycopg.Error as exc:
                raise LedgerError(f"{self.url}: the ledger failed: {_first_line(exc)}") from None
            else:
                self._gone = None
                return done
        raise AssertionError("unreachable")

    def fetch(self, sql: str, args: Sequence[object] = ()) -> list[tuple[Any, ...]]:
        """A query's rows, all fetched (small answers)."""
        return self.run(lambda conn: conn.execute(sql, args).fetchall())

    def stream(self, sql: str, args: Sequence[object] = ()) -> Iterator[tuple[Any, ...]]:
        """A query's rows through a server-side cursor, 2,000 at a time (a report of millions
        of orders holds one page in memory)."""
        wait = GONE_WAIT_S if self._still_gone() else None
        try:
            with self.pool.connection(wait) as conn, conn.cursor(name=f"rows{next(_names)}") as cur:
                cur.itersize = 2000
                cur.execute(sql, args)
                yield from cur
        except PoolTimeout as exc:
            raise self._unreachable(exc, 1) from None
        except psycopg.Error as exc:
            raise LedgerError(f"{self.url}: cannot read the ledger: {_first_line(exc)}") from None

    def _still_gone(self) -> bool:
        """The server was found gone (the next wait is short); its error raised again within
        GONE_WAIT_S of it."""
        gone = self._gone
        if gone is None:
            return False
        if time.monotonic() - gone[0] < GONE_WAIT_S:
            raise LedgerError(gone[1])
        return True

    def _unreachable(self, exc: PoolTimeout, tries: int) -> LedgerError:
        """No connection in any of ``tries`` waits: the server is gone."""
        why = f"{self.url}: cannot reach the ledger: {exc}"
        self._gone = (time.monotonic(), why + (f" ({tries} tries)" if tries > 1 else ""))
        return LedgerError(self._gone[1])

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


def connect_timeout(dsn: str) -> int:
    """Seconds to connect: the URL's ``connect_timeout`` when it names a positive one (libpq's
    parameter: a whole number, at least 2), else CONNECT_TIMEOUT_S. The pool waits twice that
    for a connection."""
    given = conninfo_to_dict(dsn).get("connect_timeout")
    try:
        seconds = int(str(given)) if given is not None else 0
    except ValueError:
        seconds = 0
    return max(seconds, 2) if seconds > 0 else CONNECT_TIMEOUT_S


def _version(conn: psycopg.Connection[Any]) -> int | None:
    if conn.execute("SELECT to_regclass('ledger_schema')").fetchone() == (None,):
        return None
    row = conn.execute("SELECT max(version) FROM ledger_schema").fetchone()
    return None if row is None or row[0] is None else int(row[0])


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
