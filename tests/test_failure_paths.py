"""Failure paths as users meet them, through the CLI: a log pipe that closes, a worker that
dies, inputs that are not regular files, rows without an ID, answers that ask to wait too long."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import Any

from tests.support import Cli, ids, ledger_rows, sim_env, write_ids
from worker.simulator import RunningSimulator


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


async def test_input_read_once_is_spooled(cli: Cli, sim: RunningSimulator, tmp_path: Path) -> None:
    """`run /dev/stdin` and a named pipe are read once into a private copy, then counted and
    sent: nothing is lost to a second read."""
    ledger = tmp_path / "l.sqlite"
    orders = ids("CDE", 12)
    data = "\n".join(["orderId", *orders]).encode() + b"\n"
    done = await cli.run("run", "/dev/stdin", "--yes", env=sim_env(sim, ledger), stdin=data)
    assert done.code == 0, done.stderr[-2000:]
    assert set(sim.sim.stats.deletes) == set(orders)
    fifo = tmp_path / "ids.fifo"
    import os  # noqa: PLC0415

    os.mkfifo(fifo)
    more = ids("ALR", 5)
    proc = await cli.start("run", str(fifo), "--yes", env=sim_env(sim, tmp_path / "m.sqlite"))

    def feed() -> None:
        with fifo.open("w") as writer:
            writer.write("\n".join(more) + "\n")

    await asyncio.to_thread(feed)
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err.decode()[-2000:]
    assert set(more) <= set(sim.sim.stats.deletes)


async def test_a_row_without_id_is_recorded(
    cli: Cli, sim: RunningSimulator, tmp_path: Path
) -> None:
    """A CSV row with content but an empty or missing ID cell is recorded `invalid` with its
    line (exit 1); an entirely empty row is still skipped."""
    ledger = tmp_path / "l.sqlite"
    src = tmp_path / "o.csv"
    src.write_text("note,orderId\na,CDE0000000001\nno id here,\n\nb,CDE0000000002\nshort\n")
    done = await cli.run("run", str(src), "--yes", env=sim_env(sim, ledger))
    assert done.code == 1, done.stderr[-2000:]
    rows = ledger_rows(ledger)
    missing = {k: r for k, r in rows.items() if r["outcome"] == "invalid"}
    assert len(missing) == 2
    assert sorted(r["message"].split(":")[1] for r in missing.values()) == ["3", "6"]
    assert rows["CDE0000000002"]["outcome"] == "cancelled"


async def test_a_long_retry_after_on_5xx_stops(
    cli: Cli, sim: RunningSimulator, tmp_path: Path
) -> None:
    """A 503 with Retry-After: 3600 is not obeyed for an hour per attempt: longer than
    --max-wait, it stops the run (exit 3), its order pending, within seconds."""
    ledger = tmp_path / "l.sqlite"
    src = write_ids(tmp_path / "o.csv", ["HRS0000000001", *ids("CDE", 3)])
    env = sim_env(sim, ledger, MOUVONE_CONCURRENCY="1")
    done = await cli.run("run", str(src), "--yes", env=env, timeout=30)
    assert done.code == 3, done.stderr[-2000:]
    assert "3600" in done.stderr.strip().splitlines()[-1]
    assert ledger_rows(ledger)["HRS0000000001"]["outcome"] == "pending"


async def test_valid_credentials_are_never_fatal(cli: Cli, make_sim: Any, tmp_path: Path) -> None:
    """Short-lived tokens, many retries and a low rate (the wait before a send longer than a
    token's life): the token is taken after the wait, so no 401 stops the run."""
    running = await make_sim(token_ttl_s=2.0, error_rate=0.4, seed=3)
    ledger = tmp_path / "l.sqlite"
    env = sim_env(
        running, ledger, MOUVONE_RATE="4", MOUVONE_CONCURRENCY="16", MOUVONE_MAX_ATTEMPTS="12"
    )
    src = write_ids(tmp_path / "o.csv", ids("CDE", 20))
    done = await cli.run("run", str(src), "--yes", env=env, timeout=60)
    assert done.code == 0, done.stderr[-2000:]
    assert running.sim.stats.statuses[401] == 0


async def test_select_through_a_persistent_outage(cli: Cli, make_sim: Any, tmp_path: Path) -> None:
    """`select` while every request answers 503: exit 3 with a one-line error, no traceback."""
    running = await make_sim(orders=50)
    running.sim.outage(3600, "503")
    env = sim_env(running, tmp_path / "l.sqlite", MOUVONE_MAX_ATTEMPTS="2")
    done = await cli.run("select", "--status", "Draft", env=env)
    assert done.code == 3, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    assert "failed on every attempt" in done.stderr.strip().splitlines()[-1]


async def test_after_a_stop_one_instruction_and_it_is_right(
    cli: Cli, sim: RunningSimulator, tmp_path: Path
) -> None:
    """Ctrl-C early in a 2,500-order run: the summary's counts are the ledger's (the claimed
    orders count as pending), it counts what was not read, and its one next step is the same
    command; `retry` refuses (it would leave the unread orders unsent); the same command then
    finishes every order with no look-up (nothing was in doubt) and nothing sent twice."""
    ledger = tmp_path / "l.sqlite"
    env = sim_env(sim, ledger, MOUVONE_RATE="400", MOUVONE_CONCURRENCY="8")
    orders = ids("CDE", 2500)
    src = write_ids(tmp_path / "o.csv", orders)
    proc = await cli.start("run", str(src), "--yes", env=env)
    await asyncio.wait_for(sim.sim.wait_for_deletes(100), 30)
    proc.send_signal(signal.SIGINT)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 130, err.decode()[-2000:]
    interrupted = next(x for x in err.decode().splitlines() if '"run_interrupted"' in x)
    assert '"in_flight":' in interrupted
    assert '"waits_s":35' in interrupted
    assert "Another SIGINT stops at once" in interrupted
    summary = out.decode()
    rows = ledger_rows(ledger)
    pending = sum(r["outcome"] == "pending" for r in rows.values())
    cancelled = sum(r["outcome"] == "cancelled" for r in rows.values())
    counts = {
        words[0]: int(words[1])
        for line in summary.splitlines()
        if len(words := line.split()) == 2 and words[1].isdigit()
    }
    assert (counts["pending"], counts["cancelled"]) == (pending, cancelled)
    assert "not read from input" in summary
    assert f"next: resume with the same command:\n  cancel-orders run {src} --yes" in summary
    assert "cancel-orders retry" not in summary
    refused = await cli.run("retry", "--yes", env=env)
    assert refused.code == 2
    assert "stopped before reading all of its input" in refused.stderr.strip().splitlines()[-1]
    sent_before = len(sim.sim.stats.arrivals)
    again = await cli.run("run", str(src), "--yes", env=env, timeout=60)
    assert again.code == 0, again.stderr[-2000:]
    assert {r["outcome"] for r in ledger_rows(ledger).values()} == {"cancelled"}
    assert len(sim.sim.stats.arrivals) - sent_before == 2500 - cancelled  # DELETEs only
    assert sim.sim.stats.resent_final == 0


async def test_files_from_spreadsheets(cli: Cli, sim: RunningSimulator, tmp_path: Path) -> None:
    """Swapped columns are refused naming the right one; a cp1252 export is refused with a
    hint, then read with --encoding cp1252; the dry run says which column, separator and
    encoding it read and where the first invalid IDs are."""
    env = sim_env(sim, tmp_path / "l.sqlite")
    swapped = tmp_path / "swapped.csv"
    rows = [f"Commande {k};CDE{k:010d}" for k in range(1, 40)]
    swapped.write_text("\n".join(["Order ID;Reference", *rows]) + "\n")
    done = await cli.run("run", str(swapped), "--dry-run", env=env)
    assert done.code == 2, done.stderr[-2000:]
    assert "pass --column 'Reference'" in done.stderr.strip().splitlines()[-1]
    export = tmp_path / "export.csv"
    export.write_bytes("Order ID;Société\nCDE0000000001;Générale\nbad one;x\n".encode("cp1252"))
    refused = await cli.run("run", str(export), "--dry-run", env=env)
    assert refused.code == 2
    assert "--encoding cp1252" in refused.stderr.strip().splitlines()[-1]
    dry = await cli.run("run", str(export), "--dry-run", "--encoding", "cp1252", env=env)
    assert dry.code == 1, dry.stderr[-2000:]
    assert "read column 'Order ID', separated by ';', encoding cp1252" in dry.stdout
    assert f"first invalid IDs at: {export}:3" in dry.stdout


async def test_a_deadline_stops_cleanly_and_the_same_command_finishes(
    cli: Cli, sim: RunningSimulator, tmp_path: Path
) -> None:
    """--run-time 1s at --rate 20 over 200 orders: exit 4 about a second in, nothing lost, the
    one next step the same command, which (without the deadline) then finishes the rest."""
    ledger = tmp_path / "l.sqlite"
    env = sim_env(sim, ledger, MOUVONE_RATE="20", MOUVONE_CONCURRENCY="4")
    src = write_ids(tmp_path / "o.csv", ids("CDE", 200))
    done = await cli.run("run", str(src), "--yes", "--run-time", "1s", env=env, timeout=30)
    assert done.code == 4, done.stderr[-2000:]
    assert "deadline was reached" in done.stdout
    assert "next: resume with the same command" in done.stdout
    rows = ledger_rows(ledger)
    sent = set(sim.sim.stats.deletes)
    assert 5 <= len(sent) <= 40
    assert {k for k, r in rows.items() if r["outcome"] == "cancelled"} == sent
    env_fast = sim_env(sim, ledger, MOUVONE_RATE="400")
    again = await cli.run("run", str(src), "--yes", env=env_fast, timeout=60)
    assert again.code == 0, again.stderr[-2000:]
    assert sim.sim.stats.resent_final == 0


async def test_a_stop_file_stops_the_run(cli: Cli, sim: RunningSimulator, tmp_path: Path) -> None:
    """--stop-file PATH: once the file appears, the run stops within about a second, exit 4."""
    ledger = tmp_path / "l.sqlite"
    stop = tmp_path / "STOP"
    env = sim_env(sim, ledger, MOUVONE_RATE="20", MOUVONE_CONCURRENCY="4")
    src = write_ids(tmp_path / "o.csv", ids("CDE", 400))
    proc = await cli.start("run", str(src), "--yes", "--stop-file", str(stop), env=env)
    await asyncio.wait_for(sim.sim.wait_for_deletes(10), 30)
    stop.touch()
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 4, err.decode()[-2000:]
    assert b"the stop file" in err
    assert len(sim.sim.stats.deletes) < 100


async def test_a_stop_file_that_cannot_be_checked_is_refused_before_anything_is_sent(
    cli: Cli, sim: RunningSimulator, tmp_path: Path
) -> None:
    """--stop-file naming a path the system cannot look at (here a name longer than it allows)
    is a usage error: exit 2, one line naming the flag, the path and the problem, and nothing
    read, claimed or sent (it stopped the run mid-way as an internal error, exit 3)."""
    ledger = tmp_path / "l.sqlite"
    stop = tmp_path / ("x" * 300)
    src = write_ids(tmp_path / "o.csv", ids("CDE", 50))
    env = sim_env(sim, ledger)
    result = await cli.run("run", str(src), "--yes", "--stop-file", str(stop), env=env)
    assert result.code == 2, result.stderr[-2000:]
    assert f"cancel-orders: --stop-file {stop}: cannot be checked (File name too long)" in (
        result.stderr.splitlines()
    )
    assert len(sim.sim.stats.deletes) == 0
    assert ledger_rows(ledger) == {}
