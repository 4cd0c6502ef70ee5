"""The fixtures: the simulator on a loopback port, the CLI in a temporary folder, a Redis
namespace of the test's own, a private Redis server. The helpers are in tests/support.py."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from tests.support import PG_URL, REDIS_URL, Cli, Queue, Receiver, redis_client, unavailable
from worker.queue.streams import Names
from worker.simulator import RunningSimulator, SimConfig, start


@pytest.fixture
async def queue() -> AsyncIterator[Queue]:
    """Fresh streams on the real Redis; skipped (failed under CI) when Redis is unreachable."""
    client = redis_client(REDIS_URL, decode_responses=True)
    try:
        await client.ping()
    except Exception as exc:  # any failure means no Redis
        await client.aclose()
        unavailable(f"Redis at {REDIS_URL} is unreachable: {exc}")
    prefix = f"test-{uuid.uuid4().hex[:8]}"
    names = Names(f"{prefix}:req", f"{prefix}-group", "c", f"{prefix}:res", f"{prefix}:dead")
    yield Queue(names, client)
    keys = [k async for k in client.scan_iter(f"{prefix}*")]
    if keys:
        await client.delete(*keys)
    await client.aclose()


@pytest.fixture
async def private_queue(private_redis: str) -> AsyncIterator[Queue]:
    """Streams on a Redis server of the test's own: for a test that kills every client's
    connection, which on the shared server would cut the other tests' running beside it."""
    client = redis_client(private_redis, decode_responses=True)
    names = Names("test:req", "test-group", "c", "test:res", "test:dead")
    yield Queue(names, client, private_redis)
    await client.aclose()


@contextlib.contextmanager
def _steady_server() -> Iterator[None]:
    """The simulator stamps each request's arrival in this process: what earlier tests left
    here is moved out of the collector's way, so that no long collection holds requests back
    and stamps them together (a second at the server would then look fuller than it was)."""
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


@pytest.fixture
async def sim() -> AsyncIterator[RunningSimulator]:
    """A default simulator on a free loopback port."""
    with _steady_server():
        running = await start(SimConfig())
        yield running
        await running.close()


@pytest.fixture
async def make_sim() -> AsyncIterator[Any]:
    """Start simulators with a given config; all are closed at the end of the test."""
    started: list[RunningSimulator] = []

    async def factory(**config: Any) -> RunningSimulator:
        running = await start(SimConfig(**config))
        started.append(running)
        return running

    with _steady_server():
        yield factory
        for running in started:
            await running.close()


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    """The CLI, run in a temporary folder (no stray .env)."""
    return Cli(tmp_path)


@pytest.fixture
async def private_redis(tmp_path: Path) -> AsyncIterator[str]:
    """A Redis server of the test's own on a free loopback port (its settings can be changed
    without touching the shared one); its URL."""
    import shutil  # noqa: PLC0415
    import socket  # noqa: PLC0415

    binary = shutil.which("redis-server")
    if binary is None:
        unavailable("redis-server is not installed")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    proc = await asyncio.create_subprocess_exec(
        binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
        "--dir", str(tmp_path),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    url = f"redis://127.0.0.1:{port}/0"
    client = redis_client(url)
    try:
        for _ in range(100):
            try:
                await client.ping()
                break
            except Exception:
                await asyncio.sleep(0.05)
        yield url
    finally:
        await client.aclose()
        proc.terminate()
        await proc.wait()


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A PostgreSQL ledger of the test's own: a fresh schema on the real server (its URL names
    the schema and an application name, the test's handle on its connections); skipped
    (failed under CI) when PostgreSQL is unreachable."""
    import psycopg  # noqa: PLC0415

    schema = f"test_{uuid.uuid4().hex[:10]}"
    try:
        admin = psycopg.connect(PG_URL, connect_timeout=5, autocommit=True)
    except psycopg.Error as exc:
        unavailable(f"PostgreSQL at {PG_URL} is unreachable: {exc}")
    with admin:
        admin.execute(f"CREATE SCHEMA {schema}")
        yield f"{PG_URL}?options=-csearch_path%3D{schema}&application_name={schema}"
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s",
            (schema,),
        )
        admin.execute(f"DROP SCHEMA {schema} CASCADE")


@pytest.fixture(params=["sqlite", "postgresql"])
def ledger_location(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Each ledger in turn: a SQLite file, then a PostgreSQL schema of the test's own."""
    if request.param == "sqlite":
        return str(tmp_path / "l.sqlite")
    return str(request.getfixturevalue("pg_url"))


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[dict[str, Handler]], Awaitable[str]]]:
    """Start loopback servers (a hostile API look-alike, a token endpoint) from {path: handler};
    their root URLs; all closed at the end."""
    runners: list[web.AppRunner] = []

    async def start(routes: dict[str, Handler]) -> str:
        app = web.Application()
        for path, handler in routes.items():
            app.router.add_route("*", path, handler)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return f"http://127.0.0.1:{port}"

    yield start
    for runner in runners:
        await runner.cleanup()


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[Receiver, str]]:
    """A webhook on loopback, and its URL (whose path is its secret, as a Slack one's)."""
    hook = Receiver()
    app = web.Application()
    app.router.add_post("/hook/T0KEN", hook.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield hook, f"http://127.0.0.1:{port}/hook/T0KEN"
    await runner.cleanup()


@pytest.fixture
async def spawned() -> AsyncIterator[list[asyncio.subprocess.Process]]:
    """Processes a test starts: killed at its end if still running (a failed assertion
    must not leave a paused run behind)."""
    procs: list[asyncio.subprocess.Process] = []
    yield procs
    for proc in procs:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
