"""Opening a ledger, a SQLite file or a PostgreSQL database: a run's is bound to one target,
and never created or changed by a dry run."""

from __future__ import annotations

import os
import stat
import tempfile
from contextlib import ExitStack
from pathlib import Path

import structlog

from worker.domain.errors import ConfigError
from worker.domain.location import Location, PostgresUrl
from worker.ledger.base import Ledger
from worker.ledger.sqlite_ledger import SqliteLedger

log = structlog.get_logger(__name__)


def ledger_at(location: Location, *, readonly: bool = False, claim_idle: float = 60.0) -> Ledger:
    """The ledger at a path or a ``postgresql://`` URL (created on first use unless read)."""
    if isinstance(location, PostgresUrl):
        from worker.ledger.pg_ledger import PgLedger  # noqa: PLC0415 - psycopg only when used

        return PgLedger(location, readonly=readonly, claim_idle=claim_idle)
    return SqliteLedger(location, readonly=readonly)


def ledger_exists(location: Location) -> bool:
    """True when there is a ledger there (a file with content, or a database holding one)."""
    ledger = existing_ledger(location)
    if ledger is None:
        return False
    ledger.close()
    return True


def existing_ledger(location: Location) -> Ledger | None:
    """The ledger there, opened to read; None when there is none yet (no file, an empty one,
    or a database without the tables). One connection pool for both questions."""
    if isinstance(location, PostgresUrl):
        from worker.ledger.pg_ledger import PgLedger  # noqa: PLC0415
        from worker.ledger.postgres import PgDb  # noqa: PLC0415

        db = PgDb(location)
        try:
            if db.version() is None:
                db.close()
                return None
        except BaseException:
            db.close()
            raise
        return PgLedger(location, readonly=True, db=db)
    if not location.is_file() or location.stat().st_size == 0:
        return None
    return SqliteLedger(location, readonly=True)


def require_ledger(location: Location) -> None:
    """ConfigError when there is no ledger there (for the commands that only read one)."""
    if not ledger_exists(location):
        where = "in this database" if isinstance(location, PostgresUrl) else "at this path"
        raise ConfigError(f"{location}: no ledger {where}")


def check_target(location: Location, base_url: str) -> None:
    """ConfigError unless the ledger at ``location`` is new or belongs to ``base_url``:
    outcomes recorded against another target (a simulator, a staging gateway) must never make
    a run against this one skip orders. Checked before anything is sent, selections included."""
    ledger = existing_ledger(location)
    if ledger is None:  # new, or left empty by a refused run
        return
    try:
        bound = ledger.target()
    finally:
        ledger.close()
    if bound is not None and bound.rstrip("/") != base_url.rstrip("/"):
        raise ConfigError(
            f"{location}: this ledger belongs to {bound}, not to {base_url}: outcomes recorded "
            "there would make this run skip orders; use another --ledger for another target"
        )


def open_ledger(
    location: Location, *, dry: bool, stack: ExitStack, claim_idle: float = 60.0
) -> Ledger:
    """A run's ledger, closed with ``stack``. A dry run only reads: the existing ledger, or an
    empty throwaway one when there is none yet, so that it never creates or changes it."""
    if dry:
        found = existing_ledger(location)
        if found is None:
            location = Path(stack.enter_context(tempfile.TemporaryDirectory())) / "dry.sqlite"
            SqliteLedger(location).close()
            found = ledger_at(location, readonly=True)
        ledger = found
    else:
        if isinstance(location, Path):
            warn_if_open_to_others(location)
        ledger = ledger_at(location, claim_idle=claim_idle)
    stack.callback(ledger.close)
    return ledger


def warn_if_open_to_others(path: Path) -> None:
    """A ledger file that another user owns or others may write: anyone of them could have
    recorded outcomes that make a run skip orders, or edited the orders `retry` sends. Said,
    not refused (a shared folder may be set up so on purpose)."""
    try:
        st = path.stat()
    except OSError:
        return  # not there yet: created owner-only
    if st.st_uid != os.getuid() or st.st_mode & 0o022:
        log.warning(
            "ledger_open_to_others",
            ledger=str(path),
            mode=stat.filemode(st.st_mode),
            detail="another user owns it or others may write it: what it records may not be "
            "this run's; chmod go-w it, or use a ledger of your own",
        )
