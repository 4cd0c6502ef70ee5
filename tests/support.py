"""What the tests share: the CLI in a real subprocess, settings and environments pointing at
the simulator, CSV inputs, ledger rows, the Redis of the suite, and running IDs through a
Runner."""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import pty
import sqlite3
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, NoReturn

import pytest
import redis.asyncio as aioredis
from aiohttp import web

from worker.domain.location import PostgresUrl
from worker.domain.models import RunOptions, RunReport
from worker.ledger import ledger_at, open_ledger
from worker.queue.streams import Names
from worker.runs.runner import Runner
from worker.settings import Settings, load_settings
from worker.simulator import RunningSimulator
from worker.sources import IdValidator
from worker.sources.csv_file import CsvSource


def unavailable(reason: str) -> NoReturn:
    """Skip a test for want of a service or a tool; under CI=true that is a failure, since CI
    starts the services and installs the tools the project needs."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI=true: nothing may skip for what the project can provide)")
    pytest.skip(reason)


def redis_client(url: str, **options: Any) -> aioredis.Redis:
    """A test's own client of a Redis server: patient (redis-py's default read timeout is
    5 s, which a read of 30,000 entries can take on a busy machine)."""
    return aioredis.Redis.from_url(url, socket_timeout=60, **options)


REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
PG_URL = os.environ.get("TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


@dataclass
class Queue:
    """Unique stream names for one test, and a Redis client to look at them."""

    names: Names
    redis: aioredis.Redis
    url: str = REDIS_URL  # the server the CLI is pointed at

    def env(self, running: RunningSimulator, tmp_path: Path, **extra: str) -> dict[str, str]:
        """The CLI's environment for this queue and this simulator."""
        return sim_env(
            running,
            tmp_path / "unused.sqlite",
            MOUVONE_REDIS_URL=self.url,
            MOUVONE_STREAM=self.names.stream,
            MOUVONE_GROUP=self.names.group,
            MOUVONE_RESULTS_STREAM=self.names.results,
            MOUVONE_DEAD_LETTER_STREAM=self.names.dead,
            **extra,
        )

    async def results(self) -> list[dict[str, str]]:
        """Every entry of the results stream."""
        return [fields for _, fields in await self.redis.xrange(self.names.results)]

    async def send_times(self) -> list[float]:
        """When each request of the group left its consumer (the result entries' attempt
        logs), in seconds since the epoch."""
        return [
            _epoch(str(attempt["sent_at"]))
            for fields in await self.results()
            for attempt in json.loads(fields.get("attempt_log") or "[]")
        ]


def _epoch(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def accounted(stderr: bytes) -> int:
    """A run's JSON summary (on its standard error) accounts for every order it read; how many
    another run took."""
    line = next(x for x in stderr.splitlines() if b'"event":"run_summary"' in x)
    summary = json.loads(line)
    taken = int(summary.get("taken_elsewhere", 0))
    counted = sum(summary["outcomes"].values()) + summary["skipped_final"] + taken
    assert counted + summary["duplicates"] == summary["orders_read"], summary
    return taken


def send_times(ledger: Path | str) -> list[float]:
    """When each request left the client (the attempt log), in seconds since the epoch: rates
    are measured where the limiter acts, not at a server sharing the CPU."""
    location = PostgresUrl(str(ledger)) if "://" in str(ledger) else Path(ledger)
    opened = ledger_at(location, readonly=True)
    try:
        return [_epoch(str(a["sent_at"])) for a in opened.audit().attempts()]
    finally:
        opened.close()


def assert_one_result_each(results: list[dict[str, str]], expected: set[str]) -> None:
    """Every order has exactly one result entry."""
    per_order = Counter(r["order_id"] for r in results)
    assert set(per_order) == expected
    assert max(per_order.values()) == 1, [k for k, n in per_order.items() if n > 1][:5]


def cut_database(pg_url: str) -> int:
    """End every connection the test's processes hold to PostgreSQL (the schema's URL names
    their application name); how many."""
    import psycopg  # noqa: PLC0415 - only the PostgreSQL tests need it

    app = pg_url.rsplit("application_name=", 1)[1]
    with psycopg.connect(pg_url.split("?", maxsplit=1)[0], autocommit=True) as admin:
        cut = admin.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE application_name = %s AND pid <> pg_backend_pid()",
            (app,),
        ).fetchone()
    return int(cut[0]) if cut else 0


class TcpRelay:
    """A TCP relay on a free loopback port to a loopback ``port`` (a database seen through
    it); ``cut`` takes the server away for good: the relay stops listening (new connections
    refused) and every connection it carries is cut."""

    def __init__(self, port: int) -> None:
        self._port = port
        self._server: asyncio.Server | None = None
        self._carried: list[asyncio.StreamWriter] = []

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._carry, "127.0.0.1", 0)
        return int(self._server.sockets[0].getsockname()[1])

    async def _carry(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self._port)
        self._carried += [writer, up_writer]
        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    async def cut(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in self._carried:
            writer.transport.abort()


async def pipe(
    source: asyncio.StreamReader,
    sink: asyncio.StreamWriter,
    seen: Callable[[bytes], None] | None = None,
) -> None:
    """Carry one direction of a connection until it ends (``seen`` is shown each piece)."""
    try:
        while data := await source.read(65536):
            if seen is not None:
                seen(data)
            sink.write(data)
            await sink.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        sink.close()


def max_in_window(times: Iterable[float], window: float = 1.0) -> int:
    """The most of these times in any ``window`` seconds."""
    ordered = sorted(times)
    best, start = 0, 0
    for end, moment in enumerate(ordered):
        while moment - ordered[start] >= window - 1e-9:
            start += 1
        best = max(best, end - start + 1)
    return best


def sim_env(running: RunningSimulator, ledger: Path | str, **extra: str) -> dict[str, str]:
    """Environment for the CLI to talk to this simulator with its demo credentials."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MOUVONE_")}
    c = running.sim.config
    env.update(
        MOUVONE_BASE_URL=running.base_url,
        MOUVONE_TOKEN_URL=running.token_url,
        MOUVONE_CLIENT_ID=c.client_id,
        MOUVONE_CLIENT_SECRET=c.client_secret,
        MOUVONE_API_KEY=c.api_key,
        MOUVONE_LEDGER=str(ledger),
        MOUVONE_LOG_FORMAT="json",
        MOUVONE_RATE="200",
        MOUVONE_BACKOFF_BASE="0.01",
        MOUVONE_BACKOFF_CAP="0.05",
    )
    env.update(extra)
    return env


def untraced(env: dict[str, str]) -> dict[str, str]:
    """``env`` without coverage's subprocess measurement: for the volume tests (thousands of
    orders through several processes), whose lines the other tests cover, and whose tracing
    cost the suite more CPU time than anything else."""
    return {k: v for k, v in env.items() if k != "COVERAGE_PROCESS_CONFIG"}


def settings_for(running: RunningSimulator, ledger: Path, **flags: Any) -> Settings:
    """Settings for an in-process run against this simulator."""
    c = running.sim.config
    values: dict[str, Any] = {
        "base_url": running.base_url,
        "token_url": running.token_url,
        "client_id": c.client_id,
        "client_secret": c.client_secret,
        "api_key": c.api_key,
        "ledger": ledger,
        "rate": 500,
        "backoff_base": 0.01,
        "backoff_cap": 0.05,
        "timeout": 5,
    }
    values.update(flags)
    return load_settings(values, env_file=None, environment=False)


@dataclass
class Completed:
    """A finished CLI process."""

    code: int
    stdout: str
    stderr: str


class Cli:
    """Runs ``python -m worker`` (or another program, the installed command) as a real
    subprocess."""

    def __init__(self, cwd: Path, program: list[str] | None = None) -> None:
        self.cwd = cwd
        self.program = program or [sys.executable, "-m", "worker"]

    async def start(
        self, *args: str, env: dict[str, str] | None = None, stdin: bytes | None = None
    ) -> asyncio.subprocess.Process:
        """Start the CLI; the caller waits for it."""
        return await asyncio.create_subprocess_exec(
            *self.program,
            *args,
            cwd=self.cwd,
            env=env if env is not None else _clean_env(),
            stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )

    async def run(
        self,
        *args: str,
        env: dict[str, str] | None = None,
        stdin: bytes | None = None,
        timeout: float = 60,
    ) -> Completed:
        """Run the CLI to its end; killed (and the test failed) after ``timeout`` seconds."""
        proc = await self.start(*args, env=env, stdin=stdin)
        assert proc.stdout is not None
        assert proc.stderr is not None
        feed = asyncio.ensure_future(_feed(proc, stdin))
        out = asyncio.ensure_future(proc.stdout.read())
        err = asyncio.ensure_future(proc.stderr.read())
        try:
            await asyncio.wait_for(proc.wait(), timeout)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            feed.cancel()
            said = (await err).decode()[-3000:]
            raise AssertionError(
                f"{' '.join(args[:2])}: still running after {timeout}s; its last words:\n{said}"
            ) from None
        assert proc.returncode is not None
        await feed
        return Completed(proc.returncode, (await out).decode(), (await err).decode())


async def _feed(proc: asyncio.subprocess.Process, data: bytes | None) -> None:
    """Write ``data`` to the process's standard input and close it; a process that ends
    without reading it all is not an error here (its exit status says what happened)."""
    if proc.stdin is None:
        return
    try:
        if data:
            proc.stdin.write(data)
            await proc.stdin.drain()
        proc.stdin.close()
    except (BrokenPipeError, ConnectionResetError):
        pass


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("MOUVONE_")}


def write_ids(path: Path, ids: Iterable[str], header: str | None = "orderId") -> Path:
    """A CSV file of IDs, one a line."""
    lines = ([header] if header else []) + list(ids)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def ledger_rows(path: Path | str) -> dict[str, dict[str, Any]]:
    """order_id -> row, read straight from the SQLite file or the PostgreSQL schema."""
    return {r["order_id"]: r for r in table_rows(path, "SELECT * FROM orders")}


def table_rows(location: Path | str, sql: str) -> list[dict[str, Any]]:
    """Rows of a query, read straight from a SQLite ledger file or a PostgreSQL ledger (its
    URL); ``ORDER BY written`` is the attempt log's order of writing in either (its ``seq``,
    left out of the rows)."""
    if str(location).startswith("postgresql://"):
        import psycopg  # noqa: PLC0415
        from psycopg.rows import dict_row  # noqa: PLC0415

        with psycopg.connect(str(location), row_factory=dict_row) as conn:
            rows = conn.execute(sql.replace("ORDER BY written", "ORDER BY seq")).fetchall()
        return [{k: v for k, v in r.items() if k not in ("seq", "heartbeat_at")} for r in rows]
    db = sqlite3.connect(location)
    db.row_factory = sqlite3.Row
    try:
        rows = db.execute(sql.replace("ORDER BY written", "ORDER BY seq"))
        return [{k: v for k, v in dict(r).items() if k != "seq"} for r in rows]
    finally:
        db.close()


async def run_ids(
    running: RunningSimulator,
    tmp_path: Path,
    ids: list[str],
    *,
    options: RunOptions | None = None,
    source: Any = None,
    **flags: Any,
) -> RunReport:
    """One run of these IDs against the simulator; the ledger is tmp_path/ledger.sqlite."""
    settings = settings_for(running, tmp_path / "ledger.sqlite", **flags)
    if source is None:
        source = CsvSource(write_ids(tmp_path / "in.csv", ids), IdValidator(settings.id_pattern))
    with ExitStack() as stack:
        ledger = open_ledger(settings.ledger, dry=bool(options and options.dry_run), stack=stack)
        return await Runner(settings, source, ledger, options or RunOptions()).execute()


def ids(prefix: str, n: int, start: int = 1) -> list[str]:
    """n order IDs with a behaviour prefix (the simulator answers by the first three letters)."""
    return [f"{prefix}{k:010d}" for k in range(start, start + n)]


MOCKED_API = "https://api.example.test/v1"  # for aioresponses: never reached


def mocked_api_settings(tmp_path: Path, **flags: Any) -> Settings:
    """Settings for a client whose answers aioresponses gives: a static token (a refresh of
    it is fatal), nothing from the environment."""
    given = {
        "base_url": MOCKED_API,
        "token_url": "https://api.example.test/token",
        "access_token": "tok",
        "api_key": "key",
        "ledger": tmp_path / "l.sqlite",
        **flags,
    }
    return load_settings(given, env_file=None, environment=False)


class Receiver:
    """A webhook on loopback: every POSTed JSON body, in order."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.raw: list[bytes] = []
        self.arrived = asyncio.Event()
        self.fail_first = 0

    async def handle(self, request: web.Request) -> web.Response:
        if self.fail_first:
            self.fail_first -= 1
            return web.Response(status=503)
        self.raw.append(await request.read())
        self.bodies.append(await request.json())
        self.arrived.set()
        return web.Response(text="ok")


async def fixed_token(_request: web.Request) -> web.Response:
    """A look-alike's token endpoint: one fixed token for everyone."""
    return web.json_response({"access_token": "t0k3n-value", "expires_in": 3600})


def lookalike_env(root: str, **extra: str) -> dict[str, str]:
    """The CLI's environment for a look-alike API served at ``root``: its base URL
    ``root/v1``, its token endpoint ``root/token``, some credentials, JSON logs."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MOUVONE_")}
    env.update(MOUVONE_BASE_URL=f"{root}/v1", MOUVONE_TOKEN_URL=f"{root}/token",
               MOUVONE_CLIENT_ID="c", MOUVONE_CLIENT_SECRET="s3cret", MOUVONE_API_KEY="k3y-value",
               MOUVONE_LOG_FORMAT="json")  # fmt: skip
    env.update(extra)
    return env


async def on_a_terminal(
    cli: Cli, args: Sequence[str], env: dict[str, str]
) -> tuple[asyncio.subprocess.Process, int]:
    """The CLI started with a terminal (a pty) for standard input, where it asks its questions;
    (the process, the terminal's other end, to answer through and to close)."""
    master, slave = pty.openpty()
    proc = await asyncio.create_subprocess_exec(
        *cli.program, *args, cwd=cli.cwd, env=env,
        stdin=slave, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    os.close(slave)
    return proc, master


async def at_the_prompt(
    cli: Cli,
    args: Sequence[str],
    env: dict[str, str],
    answer: bytes,
    meanwhile: Callable[[], object] | None = None,
) -> tuple[int, str, str]:
    """Run the CLI with a terminal for standard input, wait for its "Type 'yes'" question, do
    ``meanwhile`` (awaited when it is a coroutine function), answer; (exit status, what it
    asked, what it printed after)."""
    proc, master = await on_a_terminal(cli, args, env)
    try:
        assert proc.stderr is not None
        asked = await read_until(proc.stderr, b"Type 'yes'")
        if meanwhile is not None and inspect.isawaitable(done := meanwhile()):
            await done
        os.write(master, answer)
        out, err = await asyncio.wait_for(proc.communicate(), 60)
    finally:
        os.close(master)
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return proc.returncode, asked.decode(), out.decode() + err.decode()


async def read_until(stream: asyncio.StreamReader, marker: bytes) -> bytes:
    """What ``stream`` gives up to and including ``marker`` (and what came with it); fails the
    test when the stream ends first or nothing comes for 30 s."""
    seen = b""
    while marker not in seen:
        chunk = await asyncio.wait_for(stream.read(4096), 30)
        assert chunk, seen.decode(errors="replace")[-2000:]
        seen += chunk
    return seen
