"""Audit and history, through the CLI against the simulator: the attempt log holds one row per
request the API saw, runs record who ran them and why, `runs`, `history`, `audit`, `prune` and
`report --run` read them back."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

from tests.support import Cli, ids, sim_env, write_ids
from worker.simulator import RunningSimulator


def attempt_rows(ledger: Path) -> list[dict[str, Any]]:
    db = sqlite3.connect(ledger)
    db.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in db.execute("SELECT * FROM attempts ORDER BY rowid")]
    finally:
        db.close()


async def test_the_attempt_log_is_the_requests_the_api_saw(
    cli: Cli, sim: RunningSimulator, tmp_path: Path
) -> None:
    """A mixed batch (cancelled, refused, 503 twice then cancelled, a reset connection, a
    conflict, looked up before sending): one attempt row per request the simulator received,
    matched one for one by the X-Request-ID sent, with the simulator's own id and the run's
    who and why."""
    ledger = tmp_path / "l.sqlite"
    wanted = [*ids("CDE", 4), "ALR0000000001", "NFD0000000001", "SUB0000000001"]
    wanted += ["TMP0000000002", "RST0000000001", "CFL0000000001"]
    src = write_ids(tmp_path / "o.csv", wanted)
    env = sim_env(sim, ledger)
    done = await cli.run(
        "run", str(src), "--yes", "--operator", "alice", "--reason", "bad import",
        "--ticket", "CHG-42", env=env,
    )  # fmt: skip
    assert done.code == 1, done.stderr[-2000:]
    rows = attempt_rows(ledger)
    journal = sim.sim.stats.journal
    assert len(rows) == len(journal) == sum(sim.sim.stats.deletes.values())
    seen = {request_id: (method, order, own) for method, order, request_id, own in journal}
    assert len(seen) == len(journal)  # every request had its own id
    for row in rows:
        method, order, own = seen[row["request_id"]]
        assert (row["method"], row["order_id"]) == (method, order)
        if row["http_status"] is not None:  # a reset connection has no answer, so no id
            assert row["response_id"] == own
    tmp = [r for r in rows if r["order_id"] == "TMP0000000002"]
    assert [(r["attempt"], r["http_status"]) for r in tmp] == [(1, 503), (2, 503), (3, 200)]
    reset = [r for r in rows if r["order_id"] == "RST0000000001"]
    assert reset[0]["http_status"] is None
    assert reset[0]["error_code"] == "CONNECTION_ERROR"
    sub = next(r for r in rows if r["order_id"] == "SUB0000000001")
    assert (sub["http_status"], sub["error_code"]) == (400, "R0008")
    db = sqlite3.connect(ledger)
    try:
        run = db.execute("SELECT operator, reason, ticket, details, host FROM runs").fetchone()
        attempts = dict(db.execute("SELECT order_id, attempts FROM orders"))
    finally:
        db.close()
    assert run[:3] == ("alice", "bad import", "CHG-42")
    assert run[4]
    details = json.loads(run[3])
    assert details["input"]["lines"] == len(wanted) + 1
    assert len(details["input"]["sha256"]) == 64
    assert details["limits"]["rate"] == 200
    assert "MOUVONE" not in details["command_line"]
    # the order rows and the attempt log agree
    for order, count in attempts.items():
        assert count == sum(1 for r in rows if r["order_id"] == order and r["method"] == "DELETE")
