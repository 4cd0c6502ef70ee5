"""Guardrails of a destructive run, through the CLI against the simulator: preconditions
checked right before each DELETE (--require-status), and a canary that goes first (--canary)."""

from __future__ import annotations

from pathlib import Path

from tests.support import Cli, ids, ledger_rows, sim_env, write_ids
from worker.simulator import RunningSimulator


async def test_require_status_sends_only_orders_in_those_statuses(
    cli: Cli, sim: RunningSimulator, tmp_path: Path
) -> None:
    """--require-status Draft,Valid: every order is looked up right before its DELETE; one the
    API shows Submitted or Cancelled is recorded skipped (PRECONDITION_STATUS, the status seen
    in the message) and never sent; one that does not exist is not_found without a DELETE."""
    ledger = tmp_path / "l.sqlite"
    fine = ids("CDE", 4)
    wanted = [*fine, "SUB0000000001", "ALR0000000001", "NFD0000000001"]
    src = write_ids(tmp_path / "o.csv", wanted)
    env = sim_env(sim, ledger)
    done = await cli.run("run", str(src), "--yes", "--require-status", "Draft,Valid", env=env)
    assert done.code == 1, done.stderr[-2000:]
    assert set(sim.sim.stats.deletes) == set(fine)
    assert set(sim.sim.stats.gets) == set(wanted)
    rows = ledger_rows(ledger)
    assert {rows[o]["outcome"] for o in fine} == {"cancelled"}
    for order, status in (("SUB0000000001", "Submitted"), ("ALR0000000001", "Cancelled")):
        assert rows[order]["outcome"] == "skipped"
        assert rows[order]["error_code"] == "PRECONDITION_STATUS"
        assert f"status {status}" in rows[order]["message"]
    assert rows["NFD0000000001"]["outcome"] == "not_found"
    assert "skipped" in done.stdout
    again = await cli.run("run", str(src), "--yes", "--require-status", "Draft,Valid", env=env)
    assert again.code == 1  # skipped is final: nothing is looked up or sent again
    assert set(sim.sim.stats.deletes) == set(fine)


async def test_a_canary_that_is_not_clean_stops_the_run(
    cli: Cli, sim: RunningSimulator, tmp_path: Path
) -> None:
    """--canary 3 with a rejected order among the first three: exactly three orders are sent,
    exit 4 naming it, the rest pending; once it is taken out of the input, the same command
    sends the rest (its first three are the new canary)."""
    ledger = tmp_path / "l.sqlite"
    rest = ids("CDE", 20, start=3)
    first = ["CDE0000000001", "SUB0000000001", "CDE0000000002"]
    src = write_ids(tmp_path / "o.csv", [*first, *rest])
    env = sim_env(sim, ledger)
    stopped = await cli.run("run", str(src), "--yes", "--canary", "3", env=env)
    assert stopped.code == 4, stopped.stderr[-2000:]
    assert set(sim.sim.stats.deletes) == set(first)
    assert "canary" in stopped.stderr.strip().splitlines()[-1]
    assert "SUB0000000001" in stopped.stderr
    rows = ledger_rows(ledger)
    assert {rows[o]["outcome"] for o in rest} <= {"pending"}
    resumed = await cli.run("run", str(src), "--yes", "--canary", "3", env=env)
    assert resumed.code == 1, resumed.stderr[-2000:]  # the rejected one stays rejected
    assert set(sim.sim.stats.deletes) == {*first, *rest}
    assert sum(sim.sim.stats.deletes.values()) == len(first) + len(rest)


async def test_a_clean_canary_lets_the_rest_go(
    cli: Cli, sim: RunningSimulator, tmp_path: Path
) -> None:
    """--canary 5 with five good orders first: the whole input is sent, exit 0."""
    ledger = tmp_path / "l.sqlite"
    src = write_ids(tmp_path / "o.csv", ids("CDE", 40))
    done = await cli.run("run", str(src), "--yes", "--canary", "5", env=sim_env(sim, ledger))
    assert done.code == 0, done.stderr[-2000:]
    assert len(sim.sim.stats.deletes) == 40
    assert "canary_passed" in done.stderr
