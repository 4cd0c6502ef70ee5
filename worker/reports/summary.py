"""What a ledger report says before its rows: counts by outcome and by error code."""

from __future__ import annotations

import json

from worker.domain.models import Outcome
from worker.ledger import Ledger


def summary(
    ledger: Ledger, outcome: str | None = None, label: str | None = None
) -> dict[str, object]:
    """``total``, ``outcomes`` (every name, zeros included), ``error_codes``, ``last_run``.
    ``label`` replaces the ledger's path (a scratch ledger, as `check` uses)."""
    outcomes, codes = ledger.counts(outcome)
    last = None if label else ledger.last_run()
    if last is not None and isinstance(last.get("summary"), str):
        last["summary"] = json.loads(str(last["summary"]))
    return {
        "ledger": label or str(ledger.path),
        "total": sum(outcomes.values()),
        "outcomes": {o.value: outcomes.get(o.value, 0) for o in Outcome},
        "error_codes": dict(sorted(codes.items(), key=lambda kv: (-kv[1], kv[0]))),
        "last_run": last,
    }
