"""SQLite plumbing of the ledger: the writer's exclusive lock, a read-only connection that
works on a read-only file system, a transaction that names the file when it fails, and
upgrading a ledger of an earlier schema in place."""

from __future__ import annotations

import fcntl
import os
import sqlite3
import stat
from pathlib import Path

from worker.domain.errors import ConfigError, LedgerError
from worker.ledger.schema import RUN_COLUMNS_ADDED
from worker.ledger.sqlite_sql import (
    COMPACT_ATTEMPT_LOG,
    COMPACT_ORDERS,
    COPY_ATTEMPT_LOG,
    COPY_ORDERS,
    SCHEMA,
)


def connect_readonly(path: Path) -> sqlite3.Connection:
    """Read-only; on a read-only file system (where SQLite cannot make the WAL's shared
    memory file) the file is read as immutable: a closed ledger has no WAL left over."""
    uri = f"{path.absolute().as_uri()}?mode=ro"  # as a URI: '#' or '?' in a name is quoted
    db = sqlite3.connect(uri, uri=True, check_same_thread=False, isolation_level=None)
    try:
        db.execute("PRAGMA user_version").fetchone()
    except sqlite3.OperationalError:
        db.close()
        wal = path.with_name(path.name + "-wal")
        if wal.is_file() and wal.stat().st_size > 0:
            raise LedgerError(
                f"{path}: its latest changes are in {wal.name}, which cannot be read here "
                "(no -shm file can be made beside it): copy the ledger with its -wal file "
                "to a writable folder, or read it where it was written"
            ) from None
        uri += "&immutable=1"
        db = sqlite3.connect(uri, uri=True, check_same_thread=False, isolation_level=None)
    return db


def lock(path: Path) -> int:
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise LedgerError(f"{path}: cannot open the ledger: {exc.strerror}") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):  # /dev/null: SQLite would put a journal beside it
        os.close(fd)
        raise ConfigError(f"{path}: not a file: a ledger is a SQLite file or a postgresql:// URL")
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise LedgerError(f"{path}: the ledger is in use by another run") from None
    return fd


class Transaction:
    """BEGIN IMMEDIATE ... COMMIT, turning SQLite failures into a LedgerError naming the file."""

    def __init__(self, db: sqlite3.Connection, path: Path) -> None:
        self._db = db
        self._path = path

    def __enter__(self) -> None:
        try:
            self._db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise LedgerError(f"{self._path}: cannot write the ledger: {exc}") from None

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        try:
            if exc_type is None:
                self._db.execute("COMMIT")
                return
            self._db.execute("ROLLBACK")
        except sqlite3.Error as err:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise LedgerError(f"{self._path}: cannot write the ledger: {err}") from None
        if isinstance(exc, sqlite3.Error):
            raise LedgerError(f"{self._path}: cannot write the ledger: {exc}") from exc


def upgrade(db: sqlite3.Connection) -> None:
    """Bring a ledger of an earlier schema (or a new file) to this one, in place."""
    has_runs = db.execute("SELECT 1 FROM sqlite_master WHERE name = 'runs'").fetchone()
    if has_runs:
        present = {row[1] for row in db.execute("PRAGMA table_info(runs)")}
        for column in RUN_COLUMNS_ADDED:
            if column not in present:
                db.execute(f"ALTER TABLE runs ADD COLUMN {column} TEXT")
    tables = {n for (n,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    moves = [(aside, copy) for name, aside, copy in _COMPACTED if name in tables]
    if moves:  # the tables of an earlier schema moved to the compact ones, in one transaction
        asides = "".join(aside for aside, _ in moves)
        copies = "".join(copy for _, copy in moves)
        db.executescript(f"BEGIN IMMEDIATE;{asides}{SCHEMA}{copies}COMMIT;")
    db.executescript(SCHEMA)


# (a table of an earlier schema, the SQL that sets it aside, the SQL that copies its rows)
_COMPACTED = (
    ("attempts", COMPACT_ATTEMPT_LOG, COPY_ATTEMPT_LOG),  # schema 5
    ("orders", COMPACT_ORDERS, COPY_ORDERS),  # schema 6
)


def upgrade_file(path: Path) -> None:
    """Upgrade the ledger at ``path`` when no run holds it (a run upgrades it as it opens it);
    where it cannot be written (a read-only copy), it is read as it is."""
    try:
        fd = lock(path)
    except LedgerError:
        return
    try:
        db = sqlite3.connect(path, isolation_level=None)
        try:
            upgrade(db)
        finally:
            db.close()
    except sqlite3.Error:
        pass  # read as it is: what it lacks (the attempt log) is reported when asked for
    finally:
        os.close(fd)
