"""The results ledger: one row per order in SQLite or PostgreSQL, the source of truth of every
run."""

from worker.ledger.base import Ledger
from worker.ledger.opening import (
    check_target,
    ledger_at,
    ledger_exists,
    open_ledger,
    require_ledger,
)
from worker.ledger.plan import Plan
from worker.ledger.schema import CSV_COLUMNS, SCHEMA_VERSION
from worker.ledger.sqlite_ledger import SqliteLedger
from worker.runtime.clock import now_iso

__all__ = [
    "CSV_COLUMNS",
    "SCHEMA_VERSION",
    "Ledger",
    "Plan",
    "SqliteLedger",
    "check_target",
    "ledger_at",
    "ledger_exists",
    "now_iso",
    "open_ledger",
    "require_ledger",
]
