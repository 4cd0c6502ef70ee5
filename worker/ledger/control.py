"""The ledger as the channel of `cancel-orders control` for a running run: the control table
holds each run's standing commands (``paused``, ``rate``, ``stop``, written by `control`) and
its ``status`` (written by the run twice a second). Rows belong to one run: a later run on the
same ledger never obeys an earlier one's."""

from __future__ import annotations

import fcntl
import json
import os
import sqlite3
from pathlib import Path
from typing import Any

from worker.domain.errors import ConfigError
from worker.ledger.sqlite_sql import CONTROL_UPSERT as UPSERT
from worker.runtime.clock import now_iso


def running_run(path: Path) -> str:
    """The run now running on the ledger at ``path``; ConfigError when there is none."""
    if not path.is_file():
        raise ConfigError(f"{path}: no ledger at this path")
    fd = os.open(path, os.O_RDONLY)
    try:
        try:  # a running run holds the ledger's exclusive lock
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            running = True
        else:
            running = False
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
    if not running:
        raise ConfigError(f"{path}: no run is running on this ledger")
    db = connect(path)
    try:
        # the newest run that began since the holder took the ledger: an older unfinished run
        # (killed, say) is not the one that holds it now, however recent its row
        row = db.execute(
            "SELECT run_id FROM runs WHERE finished_at IS NULL AND started_at >= coalesce("
            "(SELECT updated_at FROM control WHERE run_id = '' AND key = 'holder'), '') "
            "ORDER BY started_at DESC LIMIT 1"
        ).fetchone()
    except sqlite3.Error as exc:
        raise ConfigError(f"{path}: cannot read the ledger: {exc}") from None
    finally:
        db.close()
    if row is None:
        raise ConfigError(
            f"{path}: the run holding this ledger has not started yet (it is asking for "
            "confirmation, or reading its input): nothing was changed; try again"
        )
    return str(row[0])


def hold(db: sqlite3.Connection) -> None:
    """Note when this process took the ledger (it holds the file's lock from now on), so that
    `control` addresses only a run begun since, never an earlier run that died holding it."""
    db.execute(UPSERT, ("", "holder", str(os.getpid()), now_iso()))


def connect(path: Path) -> sqlite3.Connection:
    """A connection of `control` beside the run's own (SQLite's locks keep them apart)."""
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA busy_timeout=5000")
    return db


def command(path: Path, run_id: str, values: dict[str, str]) -> None:
    """Set standing commands of the run ``run_id``."""
    db = connect(path)
    try:
        now = now_iso()
        db.executemany(UPSERT, [(run_id, k, v, now) for k, v in values.items()])
    except sqlite3.Error as exc:
        raise ConfigError(f"{path}: cannot write the ledger: {exc}") from None
    finally:
        db.close()


def status(path: Path, run_id: str) -> dict[str, Any]:
    """The status the run ``run_id`` last published ({} before its first)."""
    db = connect(path)
    try:
        row = db.execute(
            "SELECT value FROM control WHERE run_id = ? AND key = 'status'", (run_id,)
        ).fetchone()
    finally:
        db.close()
    found = json.loads(row[0]) if row else {}
    return found if isinstance(found, dict) else {}


def publish(db: sqlite3.Connection, run_id: str, values: dict[str, Any]) -> None:
    """The run's status (on the run's own connection)."""
    db.execute(UPSERT, (run_id, "status", json.dumps(values), now_iso()))
