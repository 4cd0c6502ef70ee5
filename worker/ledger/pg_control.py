"""`cancel-orders control` on a shared PostgreSQL ledger: every run that lives on it (its lease
fresh) is steered at once, as a consumer group is through Redis."""

from __future__ import annotations

import json
from typing import Any

from worker.domain.errors import ConfigError
from worker.domain.location import PostgresUrl
from worker.ledger.postgres import PgDb
from worker.runtime.clock import now_iso


def live_runs(url: PostgresUrl, claim_idle: float) -> list[str]:
    """The runs now running on the ledger (not ended, their lease renewed within the term
    each wrote; ``claim_idle`` only for a run of an earlier version, which wrote none), oldest
    first; ConfigError when there is none."""
    db = PgDb(url, size=1)
    try:
        if db.version() is None:  # as every command that reads a ledger says it
            raise ConfigError(f"{url}: no ledger in this database (a run creates it)")
        rows = db.fetch(
            "SELECT run_id FROM runs WHERE finished_at IS NULL AND heartbeat_at > "
            "now() - make_interval(secs => coalesce(lease_s, %s)) ORDER BY started_at",
            (claim_idle,),
        )
    finally:
        db.close()
    found = [str(r[0]) for r in rows]
    if not found:
        raise ConfigError(f"{url}: no run is running on this ledger")
    return found


def command(url: PostgresUrl, run_ids: list[str], values: dict[str, str]) -> None:
    """Set standing commands of these runs."""
    db = PgDb(url, size=1)
    now = now_iso()
    rows = [(run_id, k, v, now) for run_id in run_ids for k, v in values.items()]
    try:
        db.run(
            lambda conn: conn.cursor().executemany(
                "INSERT INTO control (run_id, key, value, updated_at) VALUES (%s, %s, %s, %s) "
                "ON CONFLICT (run_id, key) DO UPDATE SET value = excluded.value, "
                "updated_at = excluded.updated_at",
                rows,
            )
        )
    finally:
        db.close()


def statuses(url: PostgresUrl, run_ids: list[str]) -> list[dict[str, Any]]:
    """The status each of these runs last published ({} before its first)."""
    db = PgDb(url, size=1)
    try:
        rows: dict[str, str] = dict(
            db.fetch(
                "SELECT run_id, value FROM control WHERE key = 'status' AND run_id = ANY(%s)",
                (run_ids,),
            )
        )
    finally:
        db.close()
    found = []
    for run_id in run_ids:
        value = json.loads(rows[run_id]) if run_id in rows else {}
        found.append({"consumer": run_id, **value} if isinstance(value, dict) and value else {})
    return found
