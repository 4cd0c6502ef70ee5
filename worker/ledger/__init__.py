"""The results ledger: one row per order in SQLite, the source of truth of every run."""

from worker.ledger.opening import check_target, open_ledger
from worker.ledger.plan import Plan
from worker.ledger.schema import CSV_COLUMNS, SCHEMA_VERSION
from worker.ledger.store import Ledger
from worker.runtime.clock import now_iso

__all__ = [
    "CSV_COLUMNS",
    "SCHEMA_VERSION",
    "Ledger",
    "Plan",
    "check_target",
    "now_iso",
    "open_ledger",
]
