"""Failure paths as users meet them, through the CLI: a log pipe that closes, a worker that
dies, inputs that are not regular files, rows without an ID, answers that ask to wait too long."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import Any

from tests.conftest import Cli, ledger_rows, sim_env, write_ids
from worker.simulator import RunningSimulator


def ids(prefix: str, n: int) -> list[str]:
    """n order IDs with a behaviour prefix."""
    return [f"{prefix}{k:010d}" for k in range(1, n + 1)]


async def test_a_closed_log_pipe_keeps_the_brakes(
    cli: Cli, sim: RunningSimulator, tmp_path: Path
) -> None:
    """`run ... 2>&1 >out | head -n 3`: once the log's reader is gone, Ctrl-C still stops the
    run (exit 130), and every order the API answered is recorded."""
    ledger = tmp_path / "l.sqlite"
    env = sim_env(sim, ledger, MOUVONE_RATE="20", MOUVONE_CONCURRENCY="4")
    src = write_ids(tmp_path / "o.csv", ids("CDE", 200))
    proc = await cli.start("run", str(src), "--yes", env=env)
    assert proc.stderr is not None
    for _ in range(3):
        await asyncio.wait_for(proc.stderr.readline(), 30)
    transport: Any = proc._transport  # type: ignore[attr-defined]
    transport.get_pipe_transport(2).close()  # `head` exits: the log pipe has no reader
    await asyncio.wait_for(sim.sim.wait_for_deletes(30), 30)
    proc.send_signal(signal.SIGINT)
    await asyncio.wait_for(proc.wait(), 30)
    assert proc.returncode == 130
    sent = set(sim.sim.stats.deletes)
    assert len(sent) < 150
    rows = ledger_rows(ledger)
    answered = {k for k, r in rows.items() if r["outcome"] != "pending"}
    assert answered == sent
    assert all(rows[k]["outcome"] == "cancelled" for k in sent)


async def test_a_closed_stdout_keeps_the_exit_status(
    cli: Cli, sim: RunningSimulator, tmp_path: Path
) -> None:
    """A run whose summary cannot be printed (stdout closed) still exits with its own status,
    and its runs row says so."""
    ledger = tmp_path / "l.sqlite"
    src = write_ids(tmp_path / "o.csv", ["CDE0000000001", "SUB0000000001"])
    proc = await cli.start("run", str(src), "--yes", env=sim_env(sim, ledger))
    transport: Any = proc._transport  # type: ignore[attr-defined]
    transport.get_pipe_transport(1).close()
    await asyncio.wait_for(proc.wait(), 30)
    assert proc.returncode == 1
    import sqlite3  # noqa: PLC0415

    db = sqlite3.connect(ledger)
    assert db.execute("SELECT exit_code FROM runs").fetchone()[0] == 1
    db.close()
