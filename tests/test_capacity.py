"""Using the API's capacity: an order waiting for its backoff does not hold a worker, through
the CLI against the simulator (the learned gateway limit is in tests/test_limiter.py)."""

from __future__ import annotations

from pathlib import Path

from tests.support import Cli, ids, ledger_rows, sim_env, write_ids
from worker.simulator import RunningSimulator


async def test_a_backoff_frees_its_worker(cli: Cli, sim: RunningSimulator, tmp_path: Path) -> None:
    """--concurrency 1: while an order answered 503 waits for its retry, the one worker sends
    the other orders; the order still gets exactly its attempts (503, 503, then cancelled) and
    every order is recorded once."""
    ledger = tmp_path / "l.sqlite"
    wanted = ["TMP0000000002", *ids("CDE", 60)]
    src = write_ids(tmp_path / "o.csv", wanted)
    env = sim_env(
        sim, ledger, MOUVONE_BACKOFF_BASE="0.5", MOUVONE_BACKOFF_CAP="1", MOUVONE_RATE="400"
    )
    done = await cli.run("run", str(src), "--yes", "--concurrency", "1", env=env)
    assert done.code == 0, done.stderr[-2000:]
    order = [order for method, order, _, _ in sim.sim.stats.journal if method == "DELETE"]
    tries = [k for k, o in enumerate(order) if o == "TMP0000000002"]
    assert len(tries) == 3
    assert tries[2] - tries[0] > 2  # other orders went while it waited
    rows = ledger_rows(ledger)
    assert rows["TMP0000000002"]["attempts"] == 3
    assert {r["outcome"] for r in rows.values()} == {"cancelled"}
    assert len(order) == len(wanted) + 2


async def test_a_stop_leaves_orders_waiting_for_a_retry_pending(
    cli: Cli, sim: RunningSimulator, tmp_path: Path
) -> None:
    """A stop (here --run-time) while orders wait for their retry on timers (up to 30 s away):
    the run ends at once, they are recorded pending with the attempts they had, and the other
    orders are cancelled."""
    ledger = tmp_path / "l.sqlite"
    waiting = [f"TMP000000{k:03d}0" for k in range(3)]  # ending in 0: 503 on every attempt
    src = write_ids(tmp_path / "o.csv", [*waiting, *ids("CDE", 20)])
    env = sim_env(sim, ledger, MOUVONE_BACKOFF_BASE="30", MOUVONE_BACKOFF_CAP="30")
    stopped = await cli.run("run", str(src), "--yes", "--run-time", "2s", env=env, timeout=20)
    assert stopped.code == 4, stopped.stderr[-2000:]
    rows = ledger_rows(ledger)
    assert {rows[o]["outcome"] for o in waiting} == {"pending"}
    assert all(rows[o]["attempts"] >= 1 for o in waiting)
    assert all(rows[o]["outcome"] == "cancelled" for o in ids("CDE", 20))
