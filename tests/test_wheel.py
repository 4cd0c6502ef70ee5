"""What users install: the built wheel in a fresh virtual environment, run from outside the
checkout. An editable install (what the rest of the suite uses) would hide a package left out
of the build."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

from tests.support import REDIS_URL, Cli, Queue, write_ids
from worker.simulator import RunningSimulator

ROOT = Path(__file__).resolve().parent.parent
# the wheel is built once for the run (``installed``), in the setup of whichever test comes
# first: a build, a venv and an install, a minute on a busy machine
pytestmark = [pytest.mark.xdist_group("wheel"), pytest.mark.timeout(480)]
NOT_SOURCE = (".venv", ".git", "build", "*.egg-info", "__pycache__", ".*_cache", ".coverage*")
COMMANDS = ("run", "retry", "report", "select", "check", "plan", "apply", "control", "enqueue",
            "consume", "redrive", "simulate", "demo")  # fmt: skip


def _pip(python: Path, *args: str) -> None:
    done = subprocess.run(
        [str(python), "-m", "pip", "--disable-pip-version-check", "-q", *args],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


@pytest.fixture(scope="session")
def installed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(the built wheel, the installed ``cancel-orders``) in a venv outside the checkout, made
    once for the whole run: the first worker to need it builds it under a lock in the
    session's shared temporary folder, the others wait and use it (the `xdist_group` mark
    alone did not keep these tests on one worker: the wheel was built twice, 40 s each)."""
    shared = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):  # one folder per worker: their parent is the run's
        shared = shared.parent
    where = shared / "wheel"
    with (shared / "wheel.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (where / "ready").exists():
            _build(where)
            (where / "ready").touch()
    (wheel,) = (where / "dist").glob("cancel_orders-*.whl")
    return wheel, where / "venv" / "bin" / "cancel-orders"


def _build(where: Path) -> None:
    """The wheel in ``where/dist``, installed in the venv ``where/venv``."""
    shutil.rmtree(where, ignore_errors=True)  # a build a failed run left
    # built from a copy of the sources: a build in the checkout shares its build/ folder with
    # any other build running there at the same time
    source = where / "source"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(*NOT_SOURCE))
    _pip(Path(sys.executable), "wheel", "--no-deps", str(source), "-w", str(where / "dist"))
    (wheel,) = (where / "dist").glob("cancel_orders-*.whl")
    venv.EnvBuilder(with_pip=True).create(where / "venv")
    _pip(where / "venv" / "bin" / "python", "install", str(wheel))


def test_every_module_is_in_the_wheel(installed: tuple[Path, Path]) -> None:
    """Every module under worker/ and every shipped config file is in the built wheel."""
    wheel, _ = installed
    names = set(zipfile.ZipFile(wheel).namelist())
    tree = {p.relative_to(ROOT).as_posix() for p in (ROOT / "worker").rglob("*.py")}
    assert tree - names == set()
    shipped = {f"worker/defaults/{p.name}" for p in (ROOT / "config").glob("*.toml")}
    assert shipped
    assert shipped <= names
    assert "worker/sample_orders.csv" in names


async def test_help_of_every_command(installed: tuple[Path, Path], tmp_path: Path) -> None:
    """--help of the installed command and of every subcommand answers, from outside the
    checkout."""
    cli = Cli(tmp_path, [str(installed[1])])
    top = await cli.run("--help")
    assert top.code == 0, top.stderr
    for command in COMMANDS:
        assert command in top.stdout
        done = await cli.run(command, "--help")
        assert done.code == 0, (command, done.stderr)
        assert "usage: cancel-orders " + command in done.stdout


async def test_demo_from_the_wheel(installed: tuple[Path, Path], tmp_path: Path) -> None:
    """`cancel-orders demo` of the installed package runs the whole pipeline."""
    cli = Cli(tmp_path, [str(installed[1])])
    done = await cli.run("demo", timeout=120)
    assert done.code == 0, done.stderr[-3000:]
    assert "cancelled" in done.stdout
    assert "rejected" in done.stdout


async def test_queue_round_trip_from_the_wheel(
    installed: tuple[Path, Path], queue: Queue, sim: RunningSimulator, tmp_path: Path
) -> None:
    """enqueue -> consume --exit-when-empty -> report --redis-url, all from the installed
    command, against the real Redis."""
    cli = Cli(tmp_path, [str(installed[1])])
    env = queue.env(sim, tmp_path)
    orders = [f"CDE{k:010d}" for k in range(1, 21)] + ["SUB0000000001"]
    src = write_ids(tmp_path / "o.csv", orders)
    added = await cli.run("enqueue", "--yes", str(src), env=env)
    assert added.code == 0, added.stderr[-2000:]
    consumed = await cli.run("consume", "--exit-when-empty", env=env, timeout=120)
    assert consumed.code == 1, consumed.stderr[-2000:]
    report = await cli.run("report", "--redis-url", REDIS_URL, "--format", "json", env=env)
    assert report.code == 0, report.stderr[-2000:]
    data = json.loads(report.stdout)
    assert data["total"] == 21
    assert data["outcomes"]["cancelled"] == 20
    assert data["outcomes"]["rejected"] == 1
    assert sum(sim.sim.stats.deletes.values()) == 21
