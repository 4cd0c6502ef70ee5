"""Production networks, through the CLI: HTTPS with a company CA (a test CA made by trustme),
certificates that are wrong in each way, and a forward proxy on loopback (pproxy)."""

from __future__ import annotations

import asyncio
import datetime
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trustme

from tests.support import Cli, ledger_rows, pipe, sim_env, write_ids
from worker.simulator import RunningSimulator, SimConfig, start

MIXED = {"CDE0000000001": "cancelled", "ALR0000000001": "already_cancelled",
         "SUB0000000001": "rejected", "TMP0000000001": "cancelled"}  # fmt: skip


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    """A company CA of the tests' own."""
    return trustme.CA()


async def https_sim(ca: trustme.CA, *names: str, expired: bool = False) -> RunningSimulator:
    """The simulator over TLS with a certificate from ``ca`` for ``names``."""
    when = datetime.datetime.now(datetime.UTC)
    dates = {"not_before": when - datetime.timedelta(days=30),
             "not_after": when - datetime.timedelta(days=1)} if expired else {}  # fmt: skip
    cert = ca.issue_cert(*names, **dates)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(context)
    return await start(SimConfig(), tls=context)


@pytest.fixture
def bundle(ca: trustme.CA, tmp_path: Path) -> Path:
    """The CA as a PEM file, for --ca-bundle."""
    path = tmp_path / "company-ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return path


async def test_a_mixed_batch_over_https_with_a_company_ca(
    cli: Cli, ca: trustme.CA, bundle: Path, tmp_path: Path
) -> None:
    """Certificates verified, the CA given by --ca-bundle: every outcome as over plain HTTP."""
    running = await https_sim(ca, "127.0.0.1", "localhost")
    try:
        ledger = tmp_path / "l.sqlite"
        env = sim_env(running, ledger)
        src = write_ids(tmp_path / "o.csv", MIXED)
        done = await cli.run("run", str(src), "--yes", "--ca-bundle", str(bundle), env=env)
        assert done.code == 1, done.stderr[-2000:]
        assert running.base_url.startswith("https://")
        assert {k: r["outcome"] for k, r in ledger_rows(ledger).items()} == MIXED
    finally:
        await running.close()


@pytest.mark.parametrize(
    ("names", "expired", "with_bundle", "words"),
    [
        (("127.0.0.1",), False, False, "certificate verify failed"),  # an unknown CA
        (("127.0.0.1",), True, True, "expired"),
        (("api.example.org",), False, True, "IP address mismatch"),  # another host's name
    ],
)
async def test_a_certificate_failure_is_a_configuration_error(
    cli: Cli, ca: trustme.CA, bundle: Path, tmp_path: Path,
    names: tuple[str, ...], expired: bool, with_bundle: bool, words: str,
) -> None:  # fmt: skip
    """A certificate that cannot be trusted (unknown CA, expired, another name): exit 2 at the
    first request, one line naming the host, what was wrong and the setting; nothing sent."""
    running = await https_sim(ca, *names, expired=expired)
    try:
        env = sim_env(running, tmp_path / "l.sqlite")
        extra = ["--ca-bundle", str(bundle)] if with_bundle else []
        src = write_ids(tmp_path / "o.csv", ["CDE0000000001"])
        done = await cli.run("run", str(src), "--yes", *extra, env=env, timeout=30)
        assert done.code == 2, done.stderr[-2000:]
        last = done.stderr.strip().splitlines()[-1]
        assert f"127.0.0.1:{running.port}" in last
        assert words in last
        assert "MOUVONE_CA_BUNDLE" in last
        assert running.sim.stats.token_requests == 0
        assert running.sim.stats.deletes == {}
    finally:
        await running.close()


class ForwardProxy:
    """A forward HTTP proxy on loopback: CONNECT tunnels, and plain requests in absolute form
    passed on as they are (HTTP/1.1 servers accept that form). It notes the first line of every
    connection it carries."""

    def __init__(self) -> None:
        self.seen: list[str] = []
        self.deletes = 0  # DELETEs carried (absolute form), keep-alive connections included
        self.server: asyncio.Server | None = None

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._carry, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    async def _carry(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        first = await reader.readline()
        line = first.decode("latin-1").strip()
        self.seen.append(line)
        method, target = line.split(" ")[:2]
        if method == "CONNECT":
            host, port = target.rsplit(":", 1)
            while (await reader.readline()).strip():
                pass
        else:
            authority = target.split("/")[2]
            host, port = authority.rsplit(":", 1)
        up_reader, up_writer = await asyncio.open_connection(host, int(port))
        if method == "CONNECT":
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        else:
            up_writer.write(first)
        await asyncio.gather(pipe(reader, up_writer, self._count), pipe(up_reader, writer))

    def _count(self, data: bytes) -> None:
        self.deletes += data.count(b"DELETE http://")

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()


@pytest.fixture
async def proxy() -> AsyncIterator[tuple[str, ForwardProxy]]:
    """A forward proxy on a free loopback port: (its URL, the proxy)."""
    forward = ForwardProxy()
    url = await forward.start()
    yield url, forward
    await forward.close()


async def test_requests_go_through_the_proxy(
    cli: Cli, sim: RunningSimulator, proxy: tuple[str, ForwardProxy], tmp_path: Path
) -> None:
    """HTTP_PROXY (and --proxy, which takes precedence) carry the token request and the DELETEs
    through the proxy; NO_PROXY bypasses it; the proxy's credentials are never printed."""
    url, forward = proxy
    src = write_ids(tmp_path / "o.csv", ["CDE0000000001", "CDE0000000002"])
    env = sim_env(sim, tmp_path / "l.sqlite", HTTP_PROXY=url)
    done = await cli.run("run", str(src), "--yes", env=env)
    assert done.code == 0, done.stderr[-2000:]
    assert any(sim.token_url in line for line in forward.seen), forward.seen
    assert forward.deletes == 2
    carried = len(forward.seen)
    bypass = sim_env(sim, tmp_path / "b.sqlite", HTTP_PROXY=url, NO_PROXY="127.0.0.1")
    assert (await cli.run("run", str(src), "--yes", env=bypass)).code == 0
    assert len(forward.seen) == carried
    flagged = sim_env(sim, tmp_path / "f.sqlite", HTTP_PROXY="http://127.0.0.1:9",
                      MOUVONE_PROXY=url.replace("//", "//me:s3cr3t-pw@"))  # fmt: skip
    again = await cli.run("run", str(src), "--yes", "--log-level", "debug", env=flagged)
    assert again.code == 0, again.stderr[-2000:]
    assert len(forward.seen) > carried
    assert "s3cr3t-pw" not in again.stdout + again.stderr


async def test_https_through_the_proxy(
    cli: Cli, ca: trustme.CA, bundle: Path, proxy: tuple[str, ForwardProxy], tmp_path: Path
) -> None:
    """HTTPS_PROXY tunnels the TLS connection (CONNECT); the certificate is still verified
    end to end against --ca-bundle."""
    url, forward = proxy
    running = await https_sim(ca, "127.0.0.1")
    try:
        ledger = tmp_path / "l.sqlite"
        env = sim_env(running, ledger, HTTPS_PROXY=url)
        src = write_ids(tmp_path / "o.csv", MIXED)
        done = await cli.run("run", str(src), "--yes", "--ca-bundle", str(bundle), env=env)
        assert done.code == 1, done.stderr[-2000:]
        assert f"CONNECT 127.0.0.1:{running.port} HTTP/1.1" in forward.seen
        assert {k: r["outcome"] for k, r in ledger_rows(ledger).items()} == MIXED
    finally:
        await running.close()
