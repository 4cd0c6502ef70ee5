"""The ledger under hostile conditions, through the real CLI: a database locked by another
program, a read-only file system, a full disk. Each gets a clear error and exit status, and no
outcome is lost: what could not be recorded is logged, and a resume finishes the job."""

from __future__ import annotations

import asyncio
import json
import resource
import shutil
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import Cli, ledger_rows, sim_env, write_ids
from tests.test_ledger import OLD_ORDER, SCHEMA_5
from worker.domain.models import FINAL
from worker.ledger import SqliteLedger
from worker.simulator import RunningSimulator

IDS = [f"CDE{n:010d}" for n in range(1, 31)]


async def test_database_locked_by_another_program(
    cli: Cli, sim: RunningSimulator, tmp_path: Path
) -> None:
    """A write lock held by another SQLite client: exit 2 naming the ledger, nothing sent."""
    ledger = tmp_path / "l.sqlite"
    src = write_ids(tmp_path / "o.csv", IDS)
    env = sim_env(sim, ledger)
    assert (await cli.run("run", str(src), "--dry-run", env=env)).code == 0
    first = await cli.run("run", str(write_ids(tmp_path / "one.csv", IDS[:1])), "--yes", env=env)
    assert first.code == 0
    holder = sqlite3.connect(ledger, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        done = await cli.run("run", str(src), "--yes", env=env)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert done.code == 2, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(f"cancel-orders: error: {ledger}")
    assert "locked" in last
    assert sum(sim.sim.stats.deletes.values()) == 1
    again = await cli.run("run", str(src), "--yes", env=env)
    assert again.code == 0


def _unshare_works() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "-rm", "true"], capture_output=True, check=False, timeout=10)
    return probe.returncode == 0


@pytest.mark.skipif(not _unshare_works(), reason="needs unshare -rm (user and mount namespaces)")
async def test_read_only_file_system(cli: Cli, sim: RunningSimulator, tmp_path: Path) -> None:
    """On a read-only mount a run is refused (exit 2, nothing sent) and the report still reads
    the ledger."""
    folder = tmp_path / "ro"
    folder.mkdir()
    ledger = folder / "l.sqlite"
    src = write_ids(tmp_path / "o.csv", IDS)
    env = sim_env(sim, ledger)
    assert (await cli.run("run", str(src), "--yes", env=env)).code == 0
    before = sum(sim.sim.stats.deletes.values())

    def read_only(*args: str) -> subprocess.CompletedProcess[str]:
        mount = f'mount --bind -o ro "{folder}" "{folder}" && exec "$@"'
        return subprocess.run(
            ["unshare", "-rm", "sh", "-c", mount, "sh", sys.executable, "-m", "worker", *args],
            capture_output=True,
            text=True,
            env=env,
            cwd=tmp_path,
            check=False,
            timeout=60,
        )

    done = await asyncio.to_thread(read_only, "run", str(src), "--yes", "--force")
    assert done.returncode == 2, done.stderr
    assert "Read-only file system" in done.stderr.strip().splitlines()[-1]
    assert sum(sim.sim.stats.deletes.values()) == before
    report = await asyncio.to_thread(read_only, "report", "--format", "json")
    assert report.returncode == 0, report.stderr
    assert json.loads(report.stdout)["outcomes"]["cancelled"] == len(IDS)


@pytest.mark.skipif(not _unshare_works(), reason="needs unshare -rm (user and mount namespaces)")
async def test_a_read_only_copy_of_an_older_ledger_is_read_as_written(tmp_path: Path) -> None:
    """A ledger of schema 5 on a read-only mount (it cannot be upgraded to the compact orders):
    `report` in every format, `report --run` and `runs` read it as it was written."""
    folder = tmp_path / "ro"
    folder.mkdir()
    ledger = folder / "l.sqlite"
    db = sqlite3.connect(ledger)
    db.executescript(SCHEMA_5)
    db.execute("UPDATE runs SET summary = NULL")  # a run that never ended: counted from its rows
    db.commit()
    db.close()
    run_id = OLD_ORDER[6]

    def read_only(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "worker", *args, "--ledger", str(ledger)]
        return _on_read_only_mount(folder, command)

    report = await asyncio.to_thread(read_only, "report", "--format", "json")
    assert report.returncode == 0, report.stderr
    assert json.loads(report.stdout)["outcomes"]["cancelled"] == 1
    html = await asyncio.to_thread(read_only, "report", "--format", "html")
    assert html.returncode == 0, html.stderr
    assert 'id="timeline"' in html.stdout
    one_run = await asyncio.to_thread(read_only, "report", "--run", run_id, "--format", "csv")
    assert one_run.returncode == 0, one_run.stderr
    assert OLD_ORDER[0] in one_run.stdout
    runs = await asyncio.to_thread(read_only, "runs", "--format", "json")
    assert runs.returncode == 0, runs.stderr
    assert json.loads(runs.stdout)[0]["outcomes"] == {"cancelled": 1}
    db = sqlite3.connect(ledger)
    try:
        assert db.execute("PRAGMA user_version").fetchone()[0] == 5  # read, not upgraded
    finally:
        db.close()


async def test_a_read_only_copy_of_a_schema_6_ledger_is_read_with_todays_statements(
    tmp_path: Path,
) -> None:
    """A schema-6 SQLite ledger (its tables are today's: schema 7 changed PostgreSQL only) on a
    read-only mount is read with today's statements, not those of the schema-5 files, which
    read the orders through their view."""
    folder = tmp_path / "ro"
    folder.mkdir()
    ledger = folder / "l.sqlite"
    SqliteLedger(ledger).close()
    db = sqlite3.connect(ledger)
    db.execute("PRAGMA user_version = 6")
    db.commit()
    db.close()
    probe = (
        "import sys; from pathlib import Path; from worker.ledger import SqliteLedger; "
        "from worker.ledger.sqlite_sql import READ_AS_SCHEMA_5, STATEMENTS; "
        "l = SqliteLedger(Path(sys.argv[1]), readonly=True); "
        "print('today' if l.sql is STATEMENTS else 'schema 5' if l.sql is READ_AS_SCHEMA_5 "
        "else 'other')"
    )
    command = [sys.executable, "-c", probe, str(ledger)]
    read = await asyncio.to_thread(_on_read_only_mount, folder, command)
    assert read.returncode == 0, read.stderr
    assert read.stdout.strip() == "today"


def _on_read_only_mount(folder: Path, command: list[str]) -> subprocess.CompletedProcess[str]:
    """``command`` run where ``folder`` is mounted read-only (a mount namespace of its own)."""
    mount = f'mount --bind -o ro "{folder}" "{folder}" && exec "$@"'
    return subprocess.run(
        ["unshare", "-rm", "sh", "-c", mount, "sh", *command],
        capture_output=True,
        text=True,
        cwd=folder.parent,
        check=False,
        timeout=60,
    )


async def test_full_disk_stops_the_run_and_loses_nothing(make_sim: object, tmp_path: Path) -> None:
    """When the ledger cannot grow (a file size limit stands in for a full disk) the run stops
    with exit 3 and a clear error; every answer it could not record is logged; a resume then
    ends every order final."""
    running = await make_sim()  # type: ignore[operator]
    ledger = tmp_path / "l.sqlite"
    ids = [f"CDE{n:010d}" for n in range(1, 6001)]
    src = write_ids(tmp_path / "o.csv", ids)
    env = sim_env(running, ledger, MOUVONE_RATE="5000", MOUVONE_CONCURRENCY="32")

    def limit_file_size() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (600_000, 600_000))

    def full_disk_run() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "worker", "run", str(src), "--yes", "--no-progress"],
            capture_output=True,
            text=True,
            env=env,
            cwd=tmp_path,
            check=False,
            timeout=120,
            preexec_fn=limit_file_size,
        )

    done = await asyncio.to_thread(full_disk_run)
    assert done.returncode == 3, done.stderr[-2000:]
    last = done.stderr.strip().splitlines()[-1]
    assert "ledger" in last
    assert "full" in last or "disk" in last or "I/O" in last, last
    events = [json.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]
    unrecorded = {e["order_id"] for e in events if e["event"] == "unrecorded_result"}
    recorded = {k for k, r in ledger_rows(ledger).items() if r["outcome"] in FINAL}
    answered = {k for k, n in running.sim.stats.deletes.items() if n}
    assert answered <= recorded | unrecorded  # every answer is in the ledger or in the log

    resumed = await Cli(tmp_path).run("run", str(src), "--yes", env=env, timeout=120)
    assert resumed.code == 0, resumed.stderr[-2000:]
    rows = ledger_rows(ledger)
    assert set(rows) == set(ids)
    assert {r["outcome"] for r in rows.values()} <= {"cancelled", "already_cancelled"}
    # sent again only if its answer had not been recorded: never a final order sent twice
    again = {k for k, r in rows.items() if r["outcome"] == "already_cancelled"}
    assert again <= answered - recorded
    db = sqlite3.connect(ledger)
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    db.close()
    assert ledger.stat().st_mode & 0o777 == 0o600


@pytest.mark.skipif(not _unshare_works(), reason="needs unshare -rm (user and mount namespaces)")
async def test_read_only_copy_with_unmerged_wal_is_refused(tmp_path: Path) -> None:
    """A read-only ledger whose -wal file holds changes not yet merged (a crash) is refused
    with a message, instead of reporting the stale main file."""
    folder = tmp_path / "ro"
    folder.mkdir()
    ledger = folder / "l.sqlite"
    writer = SqliteLedger(ledger)
    writer.claim([(i, None) for i in IDS], "r1")
    raw = sqlite3.connect(ledger)  # holds the WAL open: nothing is merged at the writer's close
    raw.execute("PRAGMA wal_autocheckpoint=0")
    raw.execute("SELECT 1").fetchone()
    writer.claim([("CDE0000009999", None)], "r2")
    copy = tmp_path / "copy"
    copy.mkdir()
    for name in ("l.sqlite", "l.sqlite-wal"):
        shutil.copy(folder / name, copy / name)
    raw.close()
    writer.close()
    mount = f'mount --bind -o ro "{copy}" "{copy}" && exec "$@"'
    done = await asyncio.to_thread(
        subprocess.run,
        ["unshare", "-rm", "sh", "-c", mount, "sh", sys.executable, "-m", "worker", "report",
         "--ledger", str(copy / "l.sqlite")],
        capture_output=True, text=True, cwd=tmp_path, check=False, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2, done.stdout + done.stderr
    assert "l.sqlite-wal" in done.stderr.strip().splitlines()[-1]


async def test_a_ledger_name_with_uri_characters(cli: Cli, tmp_path: Path) -> None:
    """`report --ledger 'run#2.sqlite'` reads that file, not one named `run`."""
    ledger = tmp_path / "run#2.sqlite"
    writer = SqliteLedger(ledger)
    writer.claim([(i, None) for i in IDS], "r1")
    writer.close()
    done = await cli.run("report", "--ledger", str(ledger), "--format", "json")
    assert done.code == 0, done.stderr
    assert json.loads(done.stdout)["total"] == len(IDS)


async def test_a_ledger_being_created_is_not_ready(cli: Cli, tmp_path: Path) -> None:
    """A report on a ledger that has no tables yet says it is not ready (no traceback)."""
    ledger = tmp_path / "l.sqlite"
    ledger.write_bytes(b"")
    done = await cli.run("report", "--ledger", str(ledger))
    assert done.code == 2
    assert "not ready" in done.stderr.strip().splitlines()[-1]
