"""The real CLI in a subprocess against the simulator: exit statuses, output, resume, signals."""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import json
import os
import pty
import random
import re
import select
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.support import Cli, at_the_prompt, ledger_rows, sim_env, write_ids
from worker.domain.models import FINAL
from worker.ledger import SqliteLedger
from worker.simulator import RunningSimulator

MIXED = [
    "CDE0000000001",
    "CDE0000000002",
    "SUB0000000001",
    "NFD0000000001",
    "ALR0000000001",
    "ERR0000000000",
    "not-an-id",
    "CDE0000000001",
]


def _events(stderr: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]


@pytest.mark.parametrize("command", [[], ["run"], ["retry"], ["report"], ["simulate"], ["demo"]])
async def test_help(cli: Cli, command: list[str]) -> None:
    """Every command answers --help."""
    done = await cli.run(*command, "--help")
    assert done.code == 0
    assert "usage: cancel-orders" in done.stdout


async def test_mixed_run_exit_1_with_summary_and_events(
    cli: Cli, sim: RunningSimulator, tmp_path: Path
) -> None:
    """A mixed batch: exit 1, a summary on stdout, one JSON event per order on stderr."""
    ledger = tmp_path / "l.sqlite"
    src = write_ids(tmp_path / "orders.csv", MIXED)
    done = await cli.run("run", str(src), "--yes", "--max-attempts", "2", env=sim_env(sim, ledger))
    assert done.code == 1, done.stderr
    assert "cancelled                     2" in done.stdout
    # every count in one column: the outcomes' lines, the fixed ones and the requests
    counts = [re.match(r"  [a-z_ ]+? +(\d+)(   .*)?$", line) for line in done.stdout.splitlines()]
    ends = {m.end(1) for m in counts if m}
    assert len([m for m in counts if m]) >= 9, done.stdout
    assert len(ends) == 1, done.stdout
    assert "error codes:" in done.stdout
    assert f"cancel-orders report --ledger {ledger} --outcome rejected" in done.stdout
    assert f"cancel-orders retry --ledger {ledger}" in done.stdout
    events = _events(done.stderr)
    orders = [e for e in events if e["event"] == "order"]
    assert len(orders) == 7
    assert {"order_id", "outcome", "http_status", "error_code", "attempts", "latency_ms"} <= set(
        orders[0]
    )
    summary = next(e for e in events if e["event"] == "run_summary")
    assert summary["outcomes"]["rejected"] == 1
    assert summary["duplicates"] == 1


async def test_all_cancelled_exit_0_then_resume_sends_nothing(
    cli: Cli, sim: RunningSimulator, tmp_path: Path, ledger_location: str
) -> None:
    """Exit 0 when every order is cancelled; the same command again sends nothing."""
    ledger = ledger_location
    src = write_ids(tmp_path / "orders.csv", [f"CDE{n:010d}" for n in range(1, 31)])
    env = sim_env(sim, ledger)
    assert (await cli.run("run", str(src), "--yes", env=env)).code == 0
    again = await cli.run("run", str(src), "--yes", env=env)
    assert again.code == 0
    assert "already final                30" in again.stdout
    assert sim.sim.stats.resent_final == 0
    assert sum(sim.sim.stats.deletes.values()) == 30


async def test_standard_input(
    cli: Cli, sim: RunningSimulator, tmp_path: Path, ledger_location: str
) -> None:
    """`-` reads the IDs from standard input."""
    done = await cli.run(
        "run",
        "-",
        "--yes",
        env=sim_env(sim, ledger_location),
        stdin=b"CDE0000000001\r\nCDE0000000002\r\n",
    )
    assert done.code == 0, done.stderr
    assert set(ledger_rows(ledger_location)) == {"CDE0000000001", "CDE0000000002"}


async def test_missing_credential_exit_2(cli: Cli, sim: RunningSimulator, tmp_path: Path) -> None:
    """A missing credential is named in one line, exit 2, nothing sent."""
    env = sim_env(sim, tmp_path / "l.sqlite")
    del env["MOUVONE_API_KEY"]
    src = write_ids(tmp_path / "o.csv", ["CDE0000000001"])
    done = await cli.run("run", str(src), "--yes", env=env)
    assert done.code == 2
    assert done.stderr.strip().splitlines()[-1] == (
        "cancel-orders: error: missing credential: MOUVONE_API_KEY (--api-key)"
    )
    assert sim.sim.stats.token_requests == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--rate", "fast"], "argument --rate: invalid float value"),
        (["--rate", "0"], "invalid setting rate"),
        (["--nope"], "unrecognized arguments: --nope"),
        (["--ledger", "/nonexistent/dir/l.sqlite"], "cannot open the ledger"),
        (["--config", "/nonexistent.toml"], "config file not found"),
    ],
)
async def test_usage_errors_exit_2(
    cli: Cli, sim: RunningSimulator, tmp_path: Path, args: list[str], message: str
) -> None:
    """Bad flags and settings: one line, exit 2, nothing sent."""
    src = write_ids(tmp_path / "o.csv", ["CDE0000000001"])
    done = await cli.run("run", str(src), "--yes", *args, env=sim_env(sim, tmp_path / "l.sqlite"))
    assert done.code == 2
    assert message in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert sum(sim.sim.stats.deletes.values()) == 0


async def test_unreadable_input_exit_2(cli: Cli, sim: RunningSimulator, tmp_path: Path) -> None:
    """Undecodable input names file and line; nothing is sent, even the lines before it."""
    src = tmp_path / "bad.csv"
    src.write_bytes(b"orderId\nCDE0000000001\nCDE0000000002\n\xff\xfe\xfa\n")
    done = await cli.run("run", str(src), "--yes", env=sim_env(sim, tmp_path / "l.sqlite"))
    assert done.code == 2
    assert f"{src}:4: not valid UTF-8" in done.stderr
    assert sum(sim.sim.stats.deletes.values()) == 0


async def test_missing_input_exit_2(cli: Cli, sim: RunningSimulator, tmp_path: Path) -> None:
    """A missing input file: exit 2."""
    done = await cli.run(
        "run", str(tmp_path / "none.csv"), "--yes", env=sim_env(sim, tmp_path / "l.sqlite")
    )
    assert done.code == 2
    assert "none.csv: cannot read" in done.stderr


async def test_no_confirmation_sends_nothing(
    cli: Cli, sim: RunningSimulator, tmp_path: Path
) -> None:
    """Without --yes and without a terminal to ask on, nothing is sent (exit 2)."""
    src = write_ids(tmp_path / "o.csv", ["CDE0000000001"])
    done = await cli.run("run", str(src), env=sim_env(sim, tmp_path / "l.sqlite"))
    assert done.code == 2
    assert "pass --yes" in done.stderr
    assert sim.sim.stats.token_requests == 0


async def test_dry_run(cli: Cli, sim: RunningSimulator, tmp_path: Path) -> None:
    """--dry-run needs no credentials, sends nothing, creates no ledger; exit 0 if valid."""
    env = sim_env(sim, tmp_path / "l.sqlite")
    del env["MOUVONE_CLIENT_SECRET"]
    src = write_ids(tmp_path / "o.csv", ["CDE0000000001", "CDE0000000002"])
    done = await cli.run("run", str(src), "--dry-run", env=env)
    assert done.code == 0, done.stderr
    assert "would send                    2" in done.stdout
    assert not (tmp_path / "l.sqlite").exists()
    bad = write_ids(tmp_path / "b.csv", ["CDE0000000001", "oops"])
    assert (await cli.run("run", str(bad), "--dry-run", env=env)).code == 1
    assert sim.sim.stats.token_requests == 0


async def test_fatal_answer_exit_3(cli: Cli, sim: RunningSimulator, tmp_path: Path) -> None:
    """A fatal API answer: exit 3, the reason on stderr, the orders pending."""
    ids = ["USR0000000001"] + [f"CDE{n:010d}" for n in range(1, 50)]
    src = write_ids(tmp_path / "o.csv", ids)
    done = await cli.run(
        "run", str(src), "--yes", "--concurrency", "4", env=sim_env(sim, tmp_path / "l.sqlite")
    )
    assert done.code == 3
    assert "USER_ID_INVALID" in done.stderr
    rows = ledger_rows(tmp_path / "l.sqlite")
    assert rows["USR0000000001"]["outcome"] == "pending"
    assert sum(sim.sim.stats.deletes.values()) <= 5


async def test_retry_and_report(
    cli: Cli, sim: RunningSimulator, tmp_path: Path, ledger_location: str
) -> None:
    """retry resends only retryable orders; report prints table, JSON and CSV."""
    ledger = ledger_location
    env = sim_env(sim, ledger)
    src = write_ids(tmp_path / "o.csv", MIXED)
    await cli.run("run", str(src), "--yes", "--max-attempts", "2", env=env)
    before = sum(sim.sim.stats.deletes.values())
    retried = await cli.run("retry", "--yes", "--max-attempts", "2", env=env)
    assert retried.code == 1
    assert sum(sim.sim.stats.deletes.values()) - before == 2  # ERR0000000000, twice

    table = await cli.run("report", env=env)
    assert table.code == 0
    assert "retryable_failed             1" in table.stdout

    as_json = json.loads((await cli.run("report", "--format", "json", env=env)).stdout)
    assert as_json["total"] == 7
    assert set(as_json["outcomes"]) == {
        "cancelled",
        "already_cancelled",
        "not_found",
        "rejected",
        "invalid",
        "skipped",
        "retryable_failed",
        "pending",
    }
    assert as_json["outcomes"]["pending"] == 0
    assert as_json["error_codes"]["R0008"] == 1

    as_csv = (await cli.run("report", "--format", "csv", env=env)).stdout
    rows = list(csv.reader(io.StringIO(as_csv)))
    assert rows[0] == [
        "order_id",
        "outcome",
        "http_status",
        "error_code",
        "message",
        "attempts",
        "updated_at",
    ]
    assert len(rows) == 8
    only = await cli.run("report", "--format", "csv", "--outcome", "rejected", env=env)
    assert [r[0] for r in csv.reader(io.StringIO(only.stdout))][1:] == ["SUB0000000001"]


async def test_report_without_ledger(cli: Cli, tmp_path: Path) -> None:
    """report on a missing ledger: exit 2 naming it."""
    done = await cli.run("report", "--ledger", str(tmp_path / "none.sqlite"))
    assert done.code == 2
    assert "none.sqlite: no ledger at this path" in done.stderr


# The command with SIGHUP at its default, as a terminal's process has it (the suite itself may
# run under nohup, which its children would inherit).
HUNG_UP_AS_FROM_A_TERMINAL = (
    "import os, signal, sys; signal.signal(signal.SIGHUP, signal.SIG_DFL); "
    "os.execv(sys.executable, [sys.executable, '-m', 'worker', *sys.argv[1:]])"
)


@pytest.mark.parametrize(
    ("signum", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130), (signal.SIGHUP, 129)]
)
async def test_signal_mid_run(
    cli: Cli, make_sim: Any, tmp_path: Path, signum: int, code: int, ledger_location: str
) -> None:
    """A signal stops reading, lets in-flight requests finish and be recorded, exits 130/143
    (SIGHUP, a terminal that closed: 129)."""
    running = await make_sim(latency_ms=100)
    ledger = ledger_location
    ids = [f"CDE{n:010d}" for n in range(1, 301)]
    src = write_ids(tmp_path / "o.csv", ids)
    if signum == signal.SIGHUP:  # as from a terminal, whatever this process inherited
        cli = Cli(tmp_path, [sys.executable, "-c", HUNG_UP_AS_FROM_A_TERMINAL])
    proc = await cli.start(
        "run",
        str(src),
        "--yes",
        "--concurrency",
        "8",
        env=sim_env(running, ledger, MOUVONE_RATE="500"),
    )
    await asyncio.wait_for(running.sim.wait_for_deletes(24), 30)
    proc.send_signal(signum)
    out, _err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == code
    assert b"exit " + str(code).encode() in out
    rows = ledger_rows(ledger)
    assert sum(running.sim.stats.deletes.values()) <= 24 + 2 * 8  # nothing new after the signal
    claimed = 200 if ledger.endswith(".sqlite") else 100  # a shared ledger claims fewer ahead
    assert sum(r["outcome"] == "pending" for r in rows.values()) > claimed
    for order_id in running.sim.cancelled:  # every answer received was recorded
        assert rows[order_id]["outcome"] == "cancelled"
    assert {r["outcome"] for r in rows.values()} <= {"cancelled", "pending"}


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGTERM, 143), (signal.SIGHUP, 129)])
async def test_a_signal_while_the_input_is_read_stops_the_command_cleanly(
    make_sim: Any, tmp_path: Path, signum: int, code: int
) -> None:
    """A signal before a run has started (its input still coming on standard input): a
    one-line reason and the signal's exit status, nothing sent, no ledger made."""
    running = await make_sim(latency_ms=20)
    ledger = tmp_path / "l.sqlite"
    cli = Cli(tmp_path, [sys.executable, "-c", HUNG_UP_AS_FROM_A_TERMINAL])
    proc = await cli.start("run", "-", "--yes", env=sim_env(running, ledger), stdin=b"")
    assert proc.stdin is not None
    proc.stdin.write(b"orderId\nSIG0000000001\nSIG0000000002\n")  # and more to come
    await proc.stdin.drain()
    await _until_it_catches(proc.pid, signum)
    proc.send_signal(signum)
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == code, err.decode()[-2000:]
    assert err.decode().endswith(
        f"cancel-orders: stopped by {signal.Signals(signum).name}: nothing more was sent\n"
    )
    assert not running.sim.stats.deletes
    assert not ledger.exists()


async def test_a_signal_during_checks_look_ups_stops_it_cleanly(
    make_sim: Any, tmp_path: Path
) -> None:
    """SIGTERM while `check` looks orders up: it stops as a run does (its look-ups in flight
    finish, no new one starts), says why, and exits 143."""
    running = await make_sim(latency_ms=50)
    src = write_ids(tmp_path / "o.csv", [f"CHK{n:010d}" for n in range(1, 301)])
    env = sim_env(running, tmp_path / "l.sqlite", MOUVONE_RATE="20")
    proc = await Cli(tmp_path).start("check", str(src), env=env)
    err = await _terminated_after(proc, running, 5)
    assert proc.returncode == 143, err[-2000:]
    assert err.endswith("cancel-orders: error: interrupted by SIGTERM\n")
    assert 5 <= len(running.sim.stats.arrivals) < 300
    assert not running.sim.stats.deletes


async def test_a_signal_during_a_selection_stops_it_cleanly(make_sim: Any, tmp_path: Path) -> None:
    """SIGTERM while `select` pages through the API's search (an event loop, outside any run):
    the walk is cancelled, the command says why it stopped and exits 143, and no partial
    list is left where a run could take it for the selection."""
    running = await make_sim(orders=2000, seed=3, latency_ms=20)
    out = tmp_path / "selection.csv"
    env = sim_env(running, tmp_path / "l.sqlite", MOUVONE_RATE="2")
    proc = await Cli(tmp_path).start("select", "--status", "Valid", "--output", str(out), env=env)
    err = await _terminated_after(proc, running, 2)
    assert proc.returncode == 143, err[-2000:]
    assert err.endswith("cancel-orders: stopped by SIGTERM: nothing more was sent\n")
    assert len(running.sim.stats.arrivals) < 20
    assert not out.exists()


async def _terminated_after(
    proc: asyncio.subprocess.Process, running: RunningSimulator, requests: int
) -> str:
    """SIGTERM to ``proc`` once the simulator has had ``requests`` API requests (30 s at
    most); what it said on stderr once it has ended."""
    for _ in range(3000):
        if len(running.sim.stats.arrivals) >= requests:
            break
        await asyncio.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    return err.decode()


async def _until_it_catches(pid: int, signum: int) -> None:
    """Wait (30 s at most) until process ``pid`` has a handler for ``signum``."""
    status = Path(f"/proc/{pid}/status")
    for _ in range(3000):
        caught = int(status.read_text().split("SigCgt:")[1].split()[0], 16)
        if caught & (1 << (signum - 1)):
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"no handler of signal {signum} in 30 s")


# The command in a session of its own whose controlling terminal is its standard input, as a
# login shell's command has it: closing the terminal's other end hangs it up.
ON_ITS_OWN_TERMINAL = (
    "import fcntl, os, signal, sys, termios; signal.signal(signal.SIGHUP, signal.SIG_DFL); "
    "fcntl.ioctl(0, termios.TIOCSCTTY, 0); "
    "os.execv(sys.executable, [sys.executable, '-m', 'worker', *sys.argv[1:]])"
)


async def test_a_terminal_that_closes_stops_the_run_as_sigterm(
    make_sim: Any, tmp_path: Path
) -> None:
    """An SSH session lost mid-run: the terminal hangs up (SIGHUP, then every write to it
    fails). The run stops as on SIGTERM: every answer received recorded, the run's end and
    summary in the ledger, exit 129; the same command finishes the job."""
    running = await make_sim(latency_ms=20)
    ids = [f"TTY{n:010d}" for n in range(1, 1001)]
    src = write_ids(tmp_path / "o.csv", ids)
    ledger = tmp_path / "l.sqlite"
    env = sim_env(running, ledger, MOUVONE_RATE="300", MOUVONE_CONCURRENCY="8", TERM="xterm")
    del env["MOUVONE_LOG_FORMAT"]  # a person's screen: the console and the progress display
    master, slave = pty.openpty()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", ON_ITS_OWN_TERMINAL, "run", str(src), "--yes",
        cwd=tmp_path, env=env, stdin=slave, stdout=slave, stderr=slave, start_new_session=True,
    )  # fmt: skip
    os.close(slave)
    shown, hang_up = threading.Event(), threading.Event()
    loop = asyncio.get_running_loop()
    screen = loop.run_in_executor(None, _terminal, master, shown, hang_up)
    try:
        await asyncio.wait_for(running.sim.wait_for_deletes(40), 30)
        assert await loop.run_in_executor(None, shown.wait, 30)  # the progress display is up
    finally:
        hang_up.set()
    await screen
    await asyncio.wait_for(proc.wait(), 60)
    assert proc.returncode == 129
    rows = ledger_rows(ledger)
    for order_id in running.sim.cancelled:  # every answer received was recorded
        assert rows[order_id]["outcome"] == "cancelled"
    assert {r["outcome"] for r in rows.values()} == {"cancelled", "pending"}
    cli = Cli(tmp_path)
    runs = await cli.run("runs", "--ledger", str(ledger), env=env)
    assert "exit 129" in runs.stdout, runs.stdout
    with contextlib.closing(sqlite3.connect(ledger)) as db:
        (summary,) = db.execute("SELECT summary FROM runs").fetchone()
    assert json.loads(summary)["ending"].startswith("interrupted by SIGHUP (its terminal closed);")
    done = await cli.run("run", str(src), "--yes", env={**env, "MOUVONE_LOG_FORMAT": "json"})
    assert done.code == 0, done.stderr[-2000:]
    assert {r["outcome"] for r in ledger_rows(ledger).values()} == {"cancelled"}


def _terminal(fd: int, shown: threading.Event, hang_up: threading.Event) -> None:
    """A terminal's other end, read until ``hang_up`` closes it; ``shown`` once a progress
    display of the 1,000 orders is on it."""
    seen = b""
    try:
        while not hang_up.is_set():
            if select.select([fd], [], [], 0.05)[0]:
                try:
                    chunk = os.read(fd, 65536)
                except OSError:  # the process closed its end
                    break
                if not chunk:
                    break
                seen = seen[-4096:] + chunk
                if b"/1000" in seen:
                    shown.set()
    finally:
        os.close(fd)


async def test_a_run_under_nohup_outlives_its_terminal(
    make_sim: Any, tmp_path: Path, ledger_location: str
) -> None:
    """Started with SIGHUP ignored (``nohup``), a run goes on when the terminal hangs up: every
    order cancelled, exit 0."""
    running = await make_sim(latency_ms=20)
    ids = [f"HUP{n:010d}" for n in range(1, 201)]
    src = write_ids(tmp_path / "o.csv", ids)
    nohup = Cli(tmp_path, [shutil.which("nohup") or "nohup", sys.executable, "-m", "worker"])
    proc = await nohup.start(
        "run", str(src), "--yes", env=sim_env(running, ledger_location, MOUVONE_RATE="400")
    )
    await asyncio.wait_for(running.sim.wait_for_deletes(20), 30)
    proc.send_signal(signal.SIGHUP)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()[-2000:]
    assert b"exit 0" in out
    rows = ledger_rows(ledger_location)
    assert {r["outcome"] for r in rows.values()} == {"cancelled"}
    assert len(rows) == len(ids)


async def test_kill_9_then_resume(
    cli: Cli, make_sim: Any, tmp_path: Path, ledger_location: str
) -> None:
    """SIGKILL at many random moments (starting up, reading, sending, recording), resumed each
    time: every order final, one row each, no order sent again once its final outcome was in
    the ledger, and a SQLite file intact. On PostgreSQL the killed run's lease ends as the next
    run starts on the same machine (its process is gone): no wait for --claim-idle."""
    running = await make_sim(latency_ms=20)
    ledger = ledger_location
    ids = [f"CDE{n:010d}" for n in range(1, 601)]
    ids += ["SUB0000000001", "NFD0000000001", "TMP0000000001", "CFL0000000001"]
    src = write_ids(tmp_path / "o.csv", ids)
    env = sim_env(running, ledger, MOUVONE_RATE="1000", MOUVONE_CONCURRENCY="8")
    rng = random.Random(7)
    final_then: set[str] = set()
    sent_then: dict[str, int] = {}
    kills = 12
    for round_ in range(kills + 1):
        if round_ < kills:
            proc = await cli.start("run", str(src), "--yes", env=env)
            if round_ % 2:  # at a moment in time: may be before, during or after sending
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(proc.wait(), rng.uniform(0.05, 1.5))
            else:  # after some more requests have arrived
                target = sum(running.sim.stats.deletes.values()) + rng.randint(1, 60)
                waiting = asyncio.ensure_future(running.sim.wait_for_deletes(target))
                await asyncio.wait(
                    {waiting, asyncio.ensure_future(proc.wait())},
                    timeout=30,
                    return_when=asyncio.FIRST_COMPLETED,
                )
                waiting.cancel()
            if proc.returncode is None:
                proc.kill()
            await proc.wait()
        else:
            done = await cli.run("run", str(src), "--yes", env=env)
            assert done.code == 1, done.stderr  # SUB and NFD are not successes
        for order_id in final_then:  # recorded final before this run: never sent again
            assert running.sim.stats.deletes[order_id] == sent_then[order_id], order_id
        with contextlib.suppress(sqlite3.Error, psycopg.Error):  # not made yet
            final_then = {k for k, r in ledger_rows(ledger).items() if r["outcome"] in FINAL}
        sent_then = dict(running.sim.stats.deletes)
    rows = ledger_rows(ledger)
    assert set(rows) == set(ids)
    assert {r["outcome"] for r in rows.values()} <= {o.value for o in FINAL}
    # The orders a killed run left pending are looked up before being sent again: the API
    # never sees a second DELETE for an order it has already answered finally.
    assert running.sim.stats.resent_final == 0
    if ledger.startswith("postgresql://"):
        return
    db = sqlite3.connect(ledger)
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert db.execute("SELECT count(*) FROM orders").fetchone()[0] == len(ids)
    db.close()


async def test_secrets_never_printed(cli: Cli, make_sim: Any, tmp_path: Path) -> None:
    """With debug logs, no secret or token appears in the output, the ledger or the reports."""
    running = await make_sim(client_secret="S3cret-client-value", api_key="K3y-subscription")
    ledger = tmp_path / "l.sqlite"
    env = sim_env(running, ledger, MOUVONE_LOG_LEVEL="debug")
    ids = ["CDE0000000001", "ECH0000000001", "TMP0000000001", "USR0000000001"]
    done = await cli.run(
        "run", str(write_ids(tmp_path / "o.csv", ids)), "--yes", "--concurrency", "1", env=env
    )
    assert done.code == 3
    assert ledger_rows(ledger)["ECH0000000001"]["message"].startswith("key [REDACTED]")
    reports = [
        await cli.run("report", "--format", f, env=env) for f in ("table", "json", "csv", "html")
    ]
    texts = [done.stdout, done.stderr, ledger.read_bytes().decode("latin-1")]
    texts += [r.stdout + r.stderr for r in reports]
    secrets = ["S3cret-client-value", "K3y-subscription", *running.sim._tokens]
    assert len(secrets) >= 3
    for text in texts:
        for secret in secrets:
            assert secret not in text


async def test_config_file(cli: Cli, sim: RunningSimulator, tmp_path: Path) -> None:
    """Settings can come from a TOML file given with --config."""
    config = tmp_path / "settings.toml"
    config.write_text(f'base_url = "{sim.base_url}"\nrate = 5\n')
    env = sim_env(sim, tmp_path / "l.sqlite")
    del env["MOUVONE_BASE_URL"]
    del env["MOUVONE_RATE"]
    src = write_ids(tmp_path / "o.csv", ["CDE0000000001"])
    done = await cli.run("run", str(src), "--yes", "--config", str(config), env=env)
    assert done.code == 0, done.stderr
    start = next(e for e in _events(done.stderr) if e["event"] == "run_started")
    assert start["rate"] == 5


async def test_demo(cli: Cli) -> None:
    """`cancel-orders demo` runs the whole pipeline with nothing else and exits 0."""
    done = await cli.run("demo", timeout=120)
    assert done.code == 0, done.stderr
    assert "First run" in done.stdout
    assert "already final" in done.stdout
    assert "ERR0000000000  retryable_failed" in done.stdout


async def test_the_demo_kept_is_where_its_next_steps_point(cli: Cli, tmp_path: Path) -> None:
    """`demo --keep DIR` works in DIR: the `next:` lines it prints name DIR's ledger, and they
    work after the demo; without --keep it says the ledger is gone and how to keep it."""
    kept = tmp_path / "kept"
    done = await cli.run("demo", "--keep", str(kept), timeout=120)
    assert done.code == 0, done.stderr
    ledger = kept / "cancellations.sqlite"
    assert f"cancel-orders retry --ledger {ledger}" in done.stdout
    report = await cli.run("report", "--ledger", str(ledger), "--outcome", "rejected")
    assert report.code == 0, report.stderr
    assert "rejected" in report.stdout
    plain = await cli.run("demo", timeout=120)
    assert "`cancel-orders demo --keep DIR` keeps it" in plain.stdout
    assert "A one-off bulk run" in plain.stdout


async def test_simulate_serves_until_sigterm(cli: Cli) -> None:
    """`cancel-orders simulate` serves the API on loopback and stops on SIGTERM."""
    proc = await cli.start("simulate", "--port", "0")
    assert proc.stdout is not None
    first = await asyncio.wait_for(proc.stdout.readline(), 20)
    root = first.decode().split("listening on ")[1].split(" ")[0]
    reader, writer = await asyncio.open_connection(*root.removeprefix("http://").split(":"))
    writer.write(b"GET /_sim/stats HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    response = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    assert b"200 OK" in response
    proc.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(proc.wait(), 20) == 0


async def _run_on_terminal(
    cli: Cli, args: list[str], env: dict[str, str], answer: bytes
) -> tuple[int, str]:
    """Run the CLI with a pseudo-terminal as standard input and type ``answer``."""
    master, slave = pty.openpty()
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "worker",
            *args,
            cwd=cli.cwd,
            env=env,
            stdin=slave,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        os.write(master, answer)
        out, err = await asyncio.wait_for(proc.communicate(), 60)
    finally:
        os.close(master)
        os.close(slave)
    assert proc.returncode is not None
    return proc.returncode, out.decode() + err.decode()


async def test_prompt_states_count_and_target(
    cli: Cli, sim: RunningSimulator, tmp_path: Path
) -> None:
    """On a terminal, the prompt states the order count and base URL; 'yes' sends."""
    src = write_ids(tmp_path / "o.csv", ["CDE0000000001", "CDE0000000002", "CDE0000000001"])
    env = sim_env(sim, tmp_path / "l.sqlite")
    code, text = await _run_on_terminal(cli, ["run", str(src)], env, b"yes\n")
    assert code == 0, text
    assert f"About to cancel 2 orders at {sim.base_url}" in text
    assert sum(sim.sim.stats.deletes.values()) == 2


async def test_prompt_refused_sends_nothing(
    cli: Cli, sim: RunningSimulator, tmp_path: Path
) -> None:
    """Anything but 'yes' at the prompt sends nothing (exit 2)."""
    src = write_ids(tmp_path / "o.csv", ["CDE0000000001"])
    code, text = await _run_on_terminal(
        cli, ["run", str(src)], sim_env(sim, tmp_path / "l.sqlite"), b"no\n"
    )
    assert code == 2
    assert "not confirmed: nothing was sent" in text
    assert sim.sim.stats.token_requests == 0


async def test_periodic_progress_events(cli: Cli, make_sim: Any, tmp_path: Path) -> None:
    """Off a terminal, progress is a periodic `progress` event with done and total."""
    running = await make_sim(latency_ms=10)
    src = write_ids(tmp_path / "o.csv", [f"CDE{n:010d}" for n in range(1, 61)])
    env = sim_env(
        running, tmp_path / "l.sqlite", MOUVONE_RATE="60", MOUVONE_PROGRESS_INTERVAL="0.2"
    )
    done = await cli.run("run", str(src), "--yes", env=env)
    progress = [e for e in _events(done.stderr) if e["event"] == "progress"]
    assert progress
    assert progress[-1]["total"] == 60
    assert all(0 <= e["done"] <= 60 for e in progress)


async def test_the_command_starts_without_rich_and_draws_its_bar_on_a_terminal(
    cli: Cli, make_sim: Any, tmp_path: Path
) -> None:
    """The command imports structlog without rich and pygments (65 ms of every start), and rich
    still draws the progress bar when standard error is a terminal."""
    probe = (
        "import sys; from worker.entry import _structlog_without_rich as first; first(); "
        "import worker.cli.run, worker.runs.lifecycle; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('rich', 'pygments')))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=cli.cwd
    )
    assert loaded.stdout.strip() == "[]"
    running = await make_sim(latency_ms=20)
    src = write_ids(tmp_path / "o.csv", [f"CDE{n:010d}" for n in range(1, 201)])
    env = {**sim_env(running, tmp_path / "l.sqlite", MOUVONE_RATE="400"), "COLUMNS": "100"}
    master, slave = pty.openpty()
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "worker", "run", str(src), "--yes", "--concurrency", "4",
            cwd=cli.cwd, env=env, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL, stderr=slave,
        )  # fmt: skip
        os.close(slave)
        slave = -1
        screen = await asyncio.to_thread(_read_until_closed, master)
        assert await asyncio.wait_for(proc.wait(), 60) == 0
    finally:
        os.close(master)
        if slave >= 0:
            os.close(slave)
    assert "/200" in screen  # rich's count column: the bar was drawn
    assert "ETA" in screen


def _read_until_closed(fd: int) -> str:
    """Everything written to a pseudo-terminal until its last writer closes it."""
    chunks: list[bytes] = []
    while True:
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # EIO: the other end is closed
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks).decode(errors="replace")


async def test_report_on_a_file_that_is_not_a_ledger(cli: Cli, tmp_path: Path) -> None:
    """A file that is not SQLite is named in a one-line error, exit 2."""
    bogus = tmp_path / "notes.txt"
    bogus.write_text("not a database\n" * 100)
    done = await cli.run("report", "--ledger", str(bogus))
    assert done.code == 2
    assert "notes.txt: cannot open the ledger" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


async def test_column_and_force(cli: Cli, sim: RunningSimulator, tmp_path: Path) -> None:
    """--column picks the ID column; --force sends orders that are already final again."""
    src = tmp_path / "export.csv"
    src.write_text("ref;order ref\nx;CDE0000000001\ny;CDE0000000002\n", encoding="utf-8")
    env = sim_env(sim, tmp_path / "l.sqlite")
    first = await cli.run("run", str(src), "--yes", "--column", "ORDER REF", env=env)
    assert first.code == 0, first.stderr
    again = await cli.run("run", str(src), "--yes", "--column", "order ref", "--force", env=env)
    assert again.code == 0
    assert sim.sim.stats.deletes == {"CDE0000000001": 2, "CDE0000000002": 2}
    rows = ledger_rows(tmp_path / "l.sqlite")
    assert {r["outcome"] for r in rows.values()} == {"already_cancelled"}


async def test_ledger_in_use_exit_2(cli: Cli, make_sim: Any, tmp_path: Path) -> None:
    """A second run on a ledger that a run is using is refused with exit 2, sending nothing."""
    running = await make_sim(latency_ms=200)
    ledger = tmp_path / "l.sqlite"
    env = sim_env(running, ledger, MOUVONE_RATE="5")
    src = write_ids(tmp_path / "o.csv", [f"CDE{n:010d}" for n in range(1, 40)])
    first = await cli.start("run", str(src), "--yes", env=env)
    await asyncio.wait_for(running.sim.wait_for_deletes(1), 30)
    second = await cli.run("run", str(src), "--yes", env=env)
    first.send_signal(signal.SIGTERM)
    await asyncio.wait_for(first.communicate(), 30)
    assert second.code == 2
    assert "in use by another run" in second.stderr


async def test_plain_http_to_a_remote_host_is_refused(cli: Cli, tmp_path: Path) -> None:
    """A plain http:// base URL to a host that is not loopback: exit 2, one line, nothing sent."""
    src = write_ids(tmp_path / "o.csv", ["CDE0000000001"])
    done = await cli.run(
        "run", str(src), "--yes", "--base-url", "http://api.example.com/v1", "--api-key", "k"
    )
    assert done.code == 2
    assert done.stderr.count("\n") == 1
    assert "--allow-insecure-http" in done.stderr


async def test_files_are_readable_by_their_owner_only(
    cli: Cli, sim: RunningSimulator, tmp_path: Path
) -> None:
    """The ledger and the SQLite files beside it are created with mode 0600, whatever the
    umask of the shell."""
    ledger = tmp_path / "l.sqlite"
    env = sim_env(sim, ledger)
    src = write_ids(tmp_path / "o.csv", ["CDE0000000001"])
    proc = await asyncio.create_subprocess_shell(
        f'umask 022 && exec "{sys.executable}" -m worker run "{src}" --yes',
        env=env,
        cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    await proc.communicate()
    assert proc.returncode == 0
    made = [p for p in tmp_path.iterdir() if p.name.startswith("l.sqlite")]
    assert made
    assert all(p.stat().st_mode & 0o077 == 0 for p in made)


async def test_orders_on_stdin_are_confirmed_on_the_terminal(
    cli: Cli, sim: RunningSimulator, tmp_path: Path
) -> None:
    """`head -100 file | cancel-orders run -` on a terminal asks there (/dev/tty): the plan
    (target, input, what is not sent, the time at --rate), then 'yes' sends."""
    import fcntl  # noqa: PLC0415
    import termios  # noqa: PLC0415

    env = sim_env(sim, tmp_path / "l.sqlite")
    ids = b"orderId\nCDE0000000001\nCDE0000000002\nCDE0000000001\nbad\n"
    master, slave = pty.openpty()

    def own_terminal() -> None:  # the child's controlling terminal is the pty
        os.setsid()
        fcntl.ioctl(slave, termios.TIOCSCTTY, 0)

    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "worker", "run", "-", cwd=cli.cwd, env=env,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, preexec_fn=own_terminal,
        )  # fmt: skip
        os.write(master, b"yes\n")
        out, err = await asyncio.wait_for(proc.communicate(ids), 60)
    finally:
        os.close(master)
        os.close(slave)
    text = out.decode() + err.decode()
    assert proc.returncode == 1, text  # one invalid ID
    assert f"About to cancel 2 orders at {sim.base_url}" in text
    assert "not sent: 0 already final, 1 invalid, 1 duplicates" in text
    assert "at --rate 200" in text
    assert sum(sim.sim.stats.deletes.values()) == 2


async def test_nothing_to_send_asks_nothing(
    cli: Cli, sim: RunningSimulator, tmp_path: Path
) -> None:
    """With every order already final, a terminal run does not ask: nothing to send, exit 0."""
    src = write_ids(tmp_path / "o.csv", ["CDE0000000001"])
    env = sim_env(sim, tmp_path / "l.sqlite")
    assert (await cli.run("run", str(src), "--yes", env=env)).code == 0
    code, text = await _run_on_terminal(cli, ["run", str(src)], env, b"")
    assert code == 0, text
    assert "Type 'yes'" not in text


async def test_retry_keeps_the_runs_limits(cli: Cli, sim: RunningSimulator, tmp_path: Path) -> None:
    """`retry` reuses the --rate its ledger's run was given unless it is given again; `report
    --outcome X` shows that outcome's row, not six rows of zeros."""
    ledger = tmp_path / "l.sqlite"
    env = sim_env(sim, ledger)
    del env["MOUVONE_RATE"]
    src = write_ids(tmp_path / "o.csv", ["ERR0000000000", "CDE0000000001"])
    first = await cli.run("run", str(src), "--yes", "--rate", "7", "--max-attempts", "2", env=env)
    assert first.code == 1, first.stderr[-2000:]
    again = await cli.run("retry", "--yes", env=env)
    assert '"retry_reuses_limits"' in again.stderr
    assert '"rate":7.0' in again.stderr
    given = await cli.run("retry", "--yes", "--rate", "9", env=env)
    assert '"rate":7.0' not in given.stderr
    shown = await cli.run("report", "--outcome", "retryable_failed", env=env)
    rows = [line.split() for line in shown.stdout.splitlines() if line.split()[-1:] == ["0"]]
    assert rows == []
    assert "retryable_failed" in shown.stdout


async def test_control_never_steers_a_killed_run(
    cli: Cli, sim: RunningSimulator, tmp_path: Path
) -> None:
    """After `kill -9` of a run, the same command starts again and waits at its confirmation:
    `control pause` and `control stop` say the run holding the ledger has not started (exit 2)
    and change nothing, neither for the dead run nor for the new one, which, once confirmed,
    sends every order unpaused."""
    ledger = tmp_path / "l.sqlite"
    src = write_ids(tmp_path / "o.csv", [f"CDE{n:010d}" for n in range(1, 41)])
    env = sim_env(sim, ledger, MOUVONE_RATE="50", MOUVONE_CONCURRENCY="2")
    sim.sim.hold()
    doomed = await cli.start("run", str(src), "--yes", env=env)
    await sim.sim.wait_for_held(1)
    doomed.kill()
    await doomed.wait()
    sim.sim.release()

    async def refused() -> None:
        for action in ("pause", "stop"):
            done = await cli.run("control", "--ledger", str(ledger), action)
            assert done.code == 2, done.stdout + done.stderr
            assert "has not started yet" in done.stderr
        with sqlite3.connect(ledger) as db:
            standing = db.execute("SELECT key FROM control WHERE key IN ('paused', 'stop')")
            assert standing.fetchall() == []

    code, _, said = await at_the_prompt(cli, ("run", str(src)), env, b"yes\n", refused)
    assert code == 0, said[-2000:]
    assert len(sim.sim.stats.deletes) == 40


async def test_what_was_confirmed_is_what_is_sent(
    cli: Cli, sim: RunningSimulator, tmp_path: Path
) -> None:
    """The prompt says 10 orders; the input file grows to 60 before the "yes": the run stops
    (exit 4) naming the change, nothing sent; the same command then counts, asks and sends
    the 60."""
    ledger = tmp_path / "l.sqlite"
    src = write_ids(tmp_path / "o.csv", [f"CDE{n:010d}" for n in range(1, 11)])
    env = sim_env(sim, ledger)

    def grow() -> None:
        with src.open("a") as more:
            more.writelines(f"CDE{n:010d}\n" for n in range(11, 61))

    args = ("run", str(src))
    code, asked, said = await at_the_prompt(cli, args, env, b"yes\n", grow)
    assert "About to cancel 10 orders" in asked
    assert code == 4, said[-2000:]
    assert "changed after it was counted" in said
    assert sim.sim.stats.arrivals == []
    code, asked, said = await at_the_prompt(cli, args, env, b"yes\n")
    assert "About to cancel 60 orders" in asked
    assert code == 0, said[-2000:]
    assert len(sim.sim.stats.deletes) == 60


async def test_a_request_abandoned_in_flight_is_in_the_attempt_log(
    cli: Cli, sim: RunningSimulator, tmp_path: Path
) -> None:
    """SIGTERM while a DELETE is on the wire and unanswered past --grace: the abandoned
    request is an attempt-log row with its X-Request-ID and no answer (NO_ANSWER), so that
    `history` shows what went out; the order stays pending."""
    ledger = tmp_path / "l.sqlite"
    src = write_ids(tmp_path / "o.csv", [f"CDE{n:010d}" for n in range(1, 11)])
    env = sim_env(sim, ledger, MOUVONE_CONCURRENCY="2", MOUVONE_GRACE="0.5")
    sim.sim.hold()
    proc = await cli.start("run", str(src), "--yes", env=env)
    await sim.sim.wait_for_held(1)  # the first order goes alone (credentials unproven)
    proc.send_signal(signal.SIGTERM)
    _, err = await asyncio.wait_for(proc.communicate(), 60)
    sim.sim.release()
    assert proc.returncode == 143, err.decode()[-2000:]
    opened = SqliteLedger(ledger, readonly=True)
    try:
        abandoned = list(opened.audit().attempts())
    finally:
        opened.close()
    assert len(abandoned) == 1, err.decode()[-3000:]  # the DELETE held on the wire
    for row in abandoned:
        order = str(row["order_id"])
        shown = await cli.run("history", order, "--format", "json", env=env)
        assert shown.code == 0, shown.stderr
        attempts = json.loads(shown.stdout)["attempts"]
        assert [(a["method"], a["http_status"], a["error_code"]) for a in attempts] == [
            ("DELETE", None, "NO_ANSWER")
        ]
        assert attempts[0]["request_id"]
        assert ledger_rows(ledger)[order]["outcome"] == "pending"
