"""The Python API, used the way a runbook or a notebook uses it: the same run as the command
line's, with the same ledger, guardrails and audit."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

import worker
from tests.support import Receiver, ids, settings_for, table_rows
from worker.domain.errors import ConfigError
from worker.simulator import RunningSimulator


async def test_a_runbook_cancels_through_the_python_api(
    make_sim: Any, receiver: tuple[Receiver, str], tmp_path: Path
) -> None:
    """`await cancel_orders(ids, settings)`: each order's outcome returned, invalid IDs never
    sent, duplicates sent once, the run recorded with its reason and every request in the
    attempt log, the notification sent; the same call again sends nothing (final in the
    ledger); --max-orders and the ledger's target refuse before anything is sent."""
    sim = await make_sim()
    hook, url = receiver
    ledger = tmp_path / "l.sqlite"
    settings = settings_for(sim, ledger, reason="T-9 closed terminal", notify_url=url)
    wanted = [*ids("CDE", 3), "SUB0000000001", "not an id", "CDE0000000001"]
    done = await worker.cancel_orders(wanted, settings)
    assert done.exit_code == 1
    outcomes = {r["order_id"]: (r["outcome"], r["error_code"]) for r in done.results}
    assert outcomes == {
        **dict.fromkeys(ids("CDE", 3), ("cancelled", None)),
        "SUB0000000001": ("rejected", "R0008"),
        "not an id": ("invalid", "WRONG_FORMAT"),
    }
    assert set(sim.sim.stats.deletes.values()) == {1}
    (run,) = table_rows(ledger, "SELECT * FROM runs")
    assert (run["command"], run["reason"], run["exit_code"]) == ("api", "T-9 closed terminal", 1)
    assert json.loads(run["details"])["input"]["count"] == len(wanted)
    attempts = table_rows(ledger, "SELECT order_id, method FROM attempts")
    assert sorted(a["order_id"] for a in attempts) == sorted([*ids("CDE", 3), "SUB0000000001"])
    assert [body["exit_code"] for body in hook.bodies] == [1]
    assert hook.bodies[0]["command"] == "api"

    again = await worker.cancel_orders(ids("CDE", 3), settings)
    assert again.exit_code == 0
    assert again.report.summary.skipped_final == 3
    assert set(sim.sim.stats.deletes.values()) == {1}

    capped = settings_for(sim, ledger, max_orders=1)
    with pytest.raises(ConfigError, match="--max-orders 1"):
        await worker.cancel_orders(ids("CDE", 2, start=50), capped)
    other = await make_sim()
    with pytest.raises(ConfigError, match="belongs to"):
        await worker.cancel_orders(ids("CDE", 1, start=60), settings_for(other, ledger))
    assert other.sim.stats.arrivals == []
    assert "CDE0000000050" not in sim.sim.stats.deletes


async def test_a_caller_stops_the_run_with_its_control(
    sim: RunningSimulator, tmp_path: Path
) -> None:
    """The caller's RunControl stops the run as a signal would: in-flight requests finish,
    the rest stay `pending`, and the same call resumes them."""
    settings = settings_for(sim, tmp_path / "l.sqlite", rate=50, concurrency=2)
    control = worker.RunControl()
    sim.sim.hold()
    task = asyncio.create_task(worker.cancel_orders(ids("CDE", 40), settings, control=control))
    await sim.sim.wait_for_held(2)
    control.interrupt(130, "SIGINT")
    sim.sim.release()
    stopped = await task
    assert stopped.exit_code == 130
    left = [r for r in stopped.results if r["outcome"] == "pending"]
    assert left
    resumed = await worker.cancel_orders(ids("CDE", 40), settings)
    assert resumed.exit_code == 0
    assert sorted(sim.sim.stats.deletes) == ids("CDE", 40)
