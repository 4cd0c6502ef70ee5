"""Security, through the CLI against loopback servers: the client secret never leaves for
another host, hostile answers and entries cannot stop or steer a run, files around the operator
cannot steer it either."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import os
import shutil
import stat
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from tests.support import (
    REDIS_URL,
    Cli,
    Queue,
    fixed_token,
    ids,
    ledger_rows,
    lookalike_env,
    redis_client,
    sim_env,
    table_rows,
    write_ids,
)
from worker.simulator import RunningSimulator

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


async def test_the_token_request_is_never_redirected(
    cli: Cli, sim: RunningSimulator, serve: Any, tmp_path: Path
) -> None:
    """A token endpoint answering 307 to another host: exit 2 naming the Location; the other
    host never receives the client secret, nothing is sent."""
    received: list[bytes] = []

    async def thief(request: web.Request) -> web.Response:
        received.append(await request.read())
        return web.json_response({"access_token": "stolen", "expires_in": 3600})

    other = await serve({"/token": thief})

    async def redirect(_request: web.Request) -> web.Response:
        return web.Response(status=307, headers={"Location": f"{other}/token"})

    token_root = await serve({"/token": redirect})
    env = sim_env(sim, tmp_path / "l.sqlite", MOUVONE_TOKEN_URL=f"{token_root}/token")
    done = await cli.run("run", str(write_ids(tmp_path / "o.csv", ids("CDE", 3))), "--yes", env=env)
    assert done.code == 2, done.stderr[-2000:]
    assert f"{other}/token" in done.stderr.strip().splitlines()[-1]
    assert received == []
    assert sim.sim.stats.deletes == {}


async def test_a_dotenv_is_read_without_interpolation(
    cli: Cli, sim: RunningSimulator, serve: Any, tmp_path: Path
) -> None:
    """`${MOUVONE_API_KEY}` in a .env value stays that text: a .env cannot carry the key to
    another host; the settings files read are named."""
    queries: list[str] = []

    async def token(request: web.Request) -> web.Response:
        queries.append(request.query_string)
        return web.json_response({"error": "invalid_client"}, status=401)

    root = await serve({"/token": token})
    (tmp_path / ".env").write_text(f"MOUVONE_TOKEN_URL={root}/token?key=${{MOUVONE_API_KEY}}\n")
    env = sim_env(sim, tmp_path / "l.sqlite")
    del env["MOUVONE_TOKEN_URL"]
    done = await cli.run("run", str(write_ids(tmp_path / "o.csv", ids("CDE", 2))), "--yes", env=env)
    assert done.code == 3, done.stderr[-2000:]
    assert queries
    assert sim.sim.config.api_key not in "".join(queries)
    assert '"settings_files"' in done.stderr
    assert ".env" in done.stderr


async def test_a_dotenv_others_may_write_is_refused(
    cli: Cli, sim: RunningSimulator, tmp_path: Path
) -> None:
    """A .env that others may write is refused with a one-line error, exit 2, nothing sent."""
    dotenv = tmp_path / ".env"
    dotenv.write_text("MOUVONE_RATE=5\n")
    dotenv.chmod(0o666)
    done = await cli.run(
        "run", str(write_ids(tmp_path / "o.csv", ids("CDE", 2))), "--yes",
        env=sim_env(sim, tmp_path / "l.sqlite"),
    )  # fmt: skip
    assert done.code == 2
    assert "others may write it" in done.stderr.strip().splitlines()[-1]
    assert sim.sim.stats.token_requests == 0


async def test_check_redacts_what_the_api_echoes(cli: Cli, make_sim: Any, tmp_path: Path) -> None:
    """`check` writes neither the API key nor the token into its report when the API echoes
    them: every output path goes through the same redaction."""
    running = await make_sim()
    running.sim.book.orders.clear()
    env = sim_env(running, tmp_path / "l.sqlite")
    src = write_ids(tmp_path / "o.csv", ["ECH0000000001", "CDE0000000001"])
    run = await cli.run("run", str(src), "--yes", "--force", env=env)
    for fmt in ("csv", "table", "json", "html"):
        shown = await cli.run("report", "--format", fmt, env=env)
        assert running.sim.config.api_key not in shown.stdout, fmt
    assert run.code == 1
    checked = await cli.run("check", str(src), "--format", "csv", env=env)
    assert running.sim.config.api_key not in checked.stdout


async def test_secrets_as_flags_are_warned_and_files_work(
    cli: Cli, sim: RunningSimulator, tmp_path: Path
) -> None:
    """A secret given as a flag is warned about (it shows in `ps`); the client secret and the
    API key can come from files instead."""
    env = sim_env(sim, tmp_path / "l.sqlite")
    secret, key = env.pop("MOUVONE_CLIENT_SECRET"), env.pop("MOUVONE_API_KEY")
    src = write_ids(tmp_path / "o.csv", ids("CDE", 2))
    flagged = await cli.run("run", str(src), "--yes", "--client-secret", secret,
                            "--api-key", key, env=env)  # fmt: skip
    assert flagged.code == 0, flagged.stderr[-2000:]
    assert "secret_on_command_line" in flagged.stderr
    (tmp_path / "secret").write_text(secret + "\n")
    (tmp_path / "key").write_text(key + "\n")
    env.update(MOUVONE_CLIENT_SECRET_FILE=str(tmp_path / "secret"),
               MOUVONE_API_KEY_FILE=str(tmp_path / "key"))  # fmt: skip
    filed = await cli.run("run", str(src), "--yes", "--force", env=env)
    assert filed.code == 0, filed.stderr[-2000:]
    assert "secret_on_command_line" not in filed.stderr


async def test_no_core_dumps(cli: Cli, tmp_path: Path) -> None:
    """The running tool cannot dump core (a dump would hold the secret and the token)."""
    proc = await cli.start("simulate", "--port", "0")
    assert proc.stdout is not None
    await asyncio.wait_for(proc.stdout.readline(), 30)
    limits = Path(f"/proc/{proc.pid}/limits").read_text()
    proc.terminate()
    await proc.wait()
    line = next(x for x in limits.splitlines() if x.startswith("Max core file size"))
    assert line.split()[4] == "0"  # the soft limit: --core-dumps may raise it again


async def test_pushgateway_credentials_are_not_logged(
    cli: Cli, sim: RunningSimulator, tmp_path: Path
) -> None:
    """The Pushgateway URL is printed without the password of its userinfo."""
    env = sim_env(sim, tmp_path / "l.sqlite",
                  MOUVONE_PUSHGATEWAY="http://ops:s3cr3t-pw@127.0.0.1:9/")  # fmt: skip
    done = await cli.run("run", str(write_ids(tmp_path / "o.csv", ids("CDE", 1))), "--yes", env=env)
    assert done.code == 0, done.stderr[-2000:]
    assert "metrics_push_failed" in done.stderr
    assert "s3cr3t-pw" not in done.stderr + done.stdout
    assert "ops:***@127.0.0.1" in done.stderr


async def test_a_deeply_nested_body_is_unreadable(
    cli: Cli, sim: RunningSimulator, tmp_path: Path
) -> None:
    """A body nesting 5,000 arrays deep is `unreadable` (retryable), not an internal error."""
    ledger = tmp_path / "l.sqlite"
    src = write_ids(tmp_path / "o.csv", ["DEP0000000001", "CDE0000000001"])
    done = await cli.run(
        "run", str(src), "--yes", env=sim_env(sim, ledger, MOUVONE_MAX_ATTEMPTS="2")
    )
    assert done.code == 1, done.stderr[-2000:]
    row = ledger_rows(ledger)["DEP0000000001"]
    assert (row["outcome"], row["error_code"]) == ("retryable_failed", "UNREADABLE_RESPONSE")


async def test_a_stream_entry_that_is_not_utf8(
    queue: Queue, cli: Cli, sim: RunningSimulator, tmp_path: Path
) -> None:
    """One entry of undecodable bytes is dead-lettered with its reason; the entries after it
    are consumed; a malformed attempts field does not crash the stream's report."""
    n = queue.names
    raw = redis_client(REDIS_URL)
    try:
        await raw.xadd(n.stream, {"order_id": b"\xff\xfe\xfa"})
        await raw.xadd(n.stream, {"order_id": b"CDE0000000001"})
        await raw.xadd(n.results, {"order_id": "X", "outcome": "cancelled", "attempts": "1e9"})
    finally:
        await raw.aclose()
    env = queue.env(sim, tmp_path)
    done = await cli.run("consume", "--exit-when-empty", env=env, timeout=60)
    assert done.code == 1, done.stderr[-2000:]
    dead = [f for _, f in await queue.redis.xrange(n.dead)]
    assert [d["reason"] for d in dead] == ["the entry is not valid UTF-8"]
    assert "CDE0000000001" in sim.sim.stats.deletes
    report = await cli.run("report", "--redis-url", REDIS_URL, "--format", "json", env=env)
    assert report.code == 0, report.stderr[-2000:]


async def test_a_search_total_that_lies(cli: Cli, serve: Any, tmp_path: Path) -> None:
    """A search that announces 10^15 orders and returns empty pages: a clear error (exit 3)
    after a few requests, not 2x10^13 page requests."""
    pages: list[str] = []

    async def token(_request: web.Request) -> web.Response:
        return web.json_response({"access_token": "t0k3n-value", "expires_in": 3600})

    async def search(request: web.Request) -> web.Response:
        pages.append(request.query.get("offset", ""))
        return web.json_response({"total": 10**15, "returned": 0, "first": 0, "items": []})

    root = await serve({"/token": token, "/v1/customer-orders": search})
    env = lookalike_env(root)
    done = await cli.run("select", "--status", "Draft", env=env, timeout=30)
    assert done.code == 3, done.stderr[-2000:]
    assert "cannot be trusted" in done.stderr.strip().splitlines()[-1]
    assert len(pages) <= 3


async def test_control_characters_never_reach_the_terminal(
    cli: Cli, sim: RunningSimulator, tmp_path: Path
) -> None:
    """A hostile ID with an escape sequence and a newline is shown escaped by `report`."""
    ledger = tmp_path / "l.sqlite"
    src = tmp_path / "o.csv"
    with src.open("w", newline="") as out:
        csv.writer(out).writerows(
            [["orderId"], ["BAD\x1b]0;pwned\x07\nFORGED line"], ["CDE0000000001"]]
        )
    done = await cli.run("run", str(src), "--yes", env=sim_env(sim, ledger))
    assert done.code == 1, done.stderr[-2000:]
    shown = await cli.run("report", "--outcome", "invalid", env=sim_env(sim, ledger))
    assert "\x1b" not in shown.stdout
    assert "\\x1b]0;pwned\\x07\\x0aFORGED" in shown.stdout


async def test_output_never_follows_a_symlink(
    cli: Cli, sim: RunningSimulator, tmp_path: Path
) -> None:
    """`report --output` over a symlink replaces the link with an owner-only file; the link's
    target is untouched."""
    ledger = tmp_path / "l.sqlite"
    await cli.run("run", str(write_ids(tmp_path / "o.csv", ids("CDE", 2))), "--yes",
                  env=sim_env(sim, ledger))  # fmt: skip
    target = tmp_path / "precious.txt"
    target.write_text("keep me\n")
    link = tmp_path / "report.csv"
    link.symlink_to(target)
    done = await cli.run(
        "report", "--format", "csv", "--output", str(link), env=sim_env(sim, ledger)
    )
    assert done.code == 0, done.stderr
    assert target.read_text() == "keep me\n"
    assert not link.is_symlink()
    assert link.stat().st_mode & 0o777 == 0o600
    assert next(csv.reader(io.StringIO(link.read_text())))[0] == "order_id"


async def test_output_into_a_device_or_a_stream_writes_into_it(
    cli: Cli, sim: RunningSimulator, tmp_path: Path
) -> None:
    """`--output` naming what is not a file (a FIFO, a character device, /proc/self/fd/1) writes
    into it and leaves it what it was: renamed over, `--output /dev/null` run as root leaves a
    regular file where the device was. A link elsewhere is still replaced, never followed; a
    directory is one line, exit 2. A ledger that is not a file is refused before SQLite puts a
    journal beside it."""
    ledger = tmp_path / "l.sqlite"
    env = sim_env(sim, ledger)
    await cli.run("run", str(write_ids(tmp_path / "o.csv", ids("CDE", 2))), "--yes", env=env)
    report = ("report", "--format", "csv", "--output")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        assert (await cli.run(*report, str(fifo), env=env)).code == 0
        assert os.read(reader, 65536).decode().startswith("order_id,")
    finally:
        os.close(reader)
    assert stat.S_ISFIFO(fifo.lstat().st_mode)
    if os.geteuid() == 0:  # a null device of our own (CI runs as root): never /dev/null itself
        null = tmp_path / "null"
        os.mknod(null, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
        assert (await cli.run(*report, str(null), env=env)).code == 0
        assert stat.S_ISCHR(null.lstat().st_mode)
    for stream in ("/proc/self/fd/1", "/dev/fd/1"):  # (a rename into either fails: safe)
        streamed = await cli.run(*report, stream, env=env)
        assert streamed.code == 0, streamed.stderr
        assert streamed.stdout.startswith("order_id,")
    planted = tmp_path / "planted.csv"  # a link anyone could make is replaced, never followed
    planted.symlink_to(fifo)
    assert (await cli.run(*report, str(planted), env=env)).code == 0
    assert planted.is_file()
    assert not planted.is_symlink()
    if Path("/dev/shm").is_dir():  # writable by anyone: a link there named like /dev/fd/1 too
        shm = Path(tempfile.mkdtemp(dir="/dev/shm"))
        try:
            (shm / "fd").mkdir()
            target = tmp_path / "target.csv"
            target.write_text("kept\n")
            (shm / "fd" / "1").symlink_to(target)
            assert (await cli.run(*report, str(shm / "fd" / "1"), env=env)).code == 0
            assert not (shm / "fd" / "1").is_symlink()
            assert target.read_text() == "kept\n"
        finally:
            shutil.rmtree(shm)
    folder = await cli.run(*report, str(tmp_path), env=env)
    assert folder.code == 2
    assert "it is a directory, not a file" in folder.stderr
    src = str(write_ids(tmp_path / "p.csv", ids("CDE", 1)))
    as_ledger = await cli.run("run", src, "--yes", env=sim_env(sim, fifo))
    assert as_ledger.code == 2
    assert "not a file: a ledger is a SQLite file" in as_ledger.stderr
    assert sorted(p.name for p in tmp_path.glob("fifo*")) == ["fifo"]  # no journal beside it


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ('[status.500]\nverdict = "cancelled"\n', "status.500"),
        ('[status.404]\nverdict = "already_cancelled"\n', "status.404"),
        ('status = "cancelled"\n', "must be a table"),
        ("[status.400\n", "cannot read"),
    ],
)
async def test_an_outcome_table_cannot_call_failures_success(
    cli: Cli, sim: RunningSimulator, tmp_path: Path, table: str, message: str
) -> None:
    """An outcome table that maps a failure to a success, or is malformed, is refused: exit 2,
    one line, nothing sent."""
    path = tmp_path / "outcomes.toml"
    path.write_text(table)
    env = sim_env(sim, tmp_path / "l.sqlite", MOUVONE_OUTCOME_TABLE=str(path))
    done = await cli.run("run", str(write_ids(tmp_path / "o.csv", ids("CDE", 1))), "--yes", env=env)
    assert done.code == 2, done.stderr[-2000:]
    assert message in done.stderr.strip().splitlines()[-1]
    assert sim.sim.stats.deletes == {}
    assert json


@pytest.mark.parametrize(
    ("url", "warned"),
    [
        ("redis://redis.example.internal:6379/0", True),
        ("rediss://:@redis.example.internal:6380/0", True),
        ("rediss://cancel-orders:pw@redis.example.internal:6380/0", False),
        ("redis://127.0.0.1:6379/0", False),
        ("unix:///run/redis.sock", False),
    ],
)
def test_consume_warns_of_an_open_redis(url: str, warned: bool) -> None:
    """A Redis URL without a password to a host that is not loopback is warned about."""
    from worker.queue.connection import open_redis_problem  # noqa: PLC0415

    assert (open_redis_problem(url) is not None) is warned


async def test_the_token_answer_is_read_within_a_limit(
    cli: Cli, sim: RunningSimulator, serve: Any, tmp_path: Path
) -> None:
    """A token endpoint answering 60 MB is read only up to its limit (the answer is then
    unreadable): the process never holds the whole body."""

    async def huge(_request: web.Request) -> web.StreamResponse:
        return web.Response(body=b'{"access_token": "' + b"x" * 60_000_000 + b'"}',
                            content_type="application/json")  # fmt: skip

    root = await serve({"/token": huge})
    env = sim_env(sim, tmp_path / "l.sqlite", MOUVONE_TOKEN_URL=f"{root}/token",
                  MOUVONE_MAX_ATTEMPTS="2")  # fmt: skip
    proc = await cli.start(
        "run", str(write_ids(tmp_path / "o.csv", ids("CDE", 1))), "--yes", env=env
    )
    peak = 0
    while proc.returncode is None:
        status = Path(f"/proc/{proc.pid}/status")
        if status.exists():
            found = [x for x in status.read_text().splitlines() if x.startswith("VmHWM:")]
            peak = max(peak, int(found[0].split()[1])) if found else peak
        try:
            await asyncio.wait_for(proc.wait(), 0.05)
        except TimeoutError:
            continue
    _, err = await proc.communicate()
    assert proc.returncode == 3, err.decode()[-2000:]
    assert "unreadable" in err.decode().strip().splitlines()[-1]
    assert 0 < peak < 150_000, peak  # kB: far under what a 60 MB body read whole takes


async def test_csv_exports_are_safe_in_a_spreadsheet(
    cli: Cli, sim: RunningSimulator, tmp_path: Path
) -> None:
    """A message the API sends as a formula (=HYPERLINK(...)) is neutralised with a leading
    quote in the CSV export; JSON and the ledger keep it as it came; IDs are unchanged."""
    ledger = tmp_path / "l.sqlite"
    env = sim_env(sim, ledger)
    src = write_ids(tmp_path / "o.csv", ["FRM0000000001", "CDE0000000001"])
    assert (await cli.run("run", str(src), "--yes", env=env)).code == 1
    exported = await cli.run("report", "--format", "csv", env=env)
    rows = {r["order_id"]: r for r in csv.DictReader(io.StringIO(exported.stdout))}
    assert rows["FRM0000000001"]["message"] == '\'=HYPERLINK("http://evil.example","click")'
    assert ledger_rows(ledger)["FRM0000000001"]["message"].startswith("=HYPERLINK")
    checked = await cli.run("check", str(src), "--format", "csv", env=env)
    assert ",=" not in checked.stdout


async def test_an_answer_carrying_a_nul_is_recorded(
    cli: Cli, serve: Any, ledger_location: str, tmp_path: Path
) -> None:
    """A refusal whose message and code carry U+0000 (which PostgreSQL's text and jsonb cannot
    hold, and SQLite's JSON functions cut the text at): every order's outcome is recorded in
    either ledger, the character shown as U+FFFD, and the run ends as its answers say (exit 1),
    not on a ledger failure that would take the batch's other outcomes with it."""

    async def delete(request: web.Request) -> web.Response:
        if request.match_info["id"].endswith("1"):
            return web.json_response({"code": "BAD\u0000CODE", "message": "a\u0000b"}, status=400)
        return web.json_response({}, status=200)

    root = await serve({"/token": fixed_token, "/v1/customer-orders/{id}": delete})
    env = lookalike_env(root, MOUVONE_LEDGER=ledger_location)
    done = await cli.run("run", str(write_ids(tmp_path / "o.csv", ids("CDE", 4))), "--yes", env=env)
    assert done.code == 1, done.stderr[-2000:]
    rows = ledger_rows(ledger_location)
    assert {r["outcome"] for r in rows.values()} == {"cancelled", "rejected"}
    assert len(rows) == 4
    assert rows["CDE0000000001"]["message"] == "a\ufffdb"
    logged = table_rows(ledger_location, "SELECT message FROM attempts ORDER BY written")
    assert len(logged) == 4
