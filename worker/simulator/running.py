"""Starting the simulator on a loopback port (over TLS when asked), and what a test or the demo
needs of it once it listens: its URLs, its state, closing it."""

from __future__ import annotations

import ssl
from dataclasses import dataclass

from aiohttp import web

from worker.simulator.config import SimConfig
from worker.simulator.server import Simulator


@dataclass
class RunningSimulator:
    """A simulator listening on a loopback port."""

    sim: Simulator
    runner: web.AppRunner
    host: str
    port: int
    tls: bool = False

    @property
    def root(self) -> str:
        """http://host:port (https:// when it serves TLS)."""
        return f"{'https' if self.tls else 'http'}://{self.host}:{self.port}"

    @property
    def base_url(self) -> str:
        """The MOUVONE_BASE_URL to point the tool at."""
        return self.root + self.sim.config.base_path

    @property
    def token_url(self) -> str:
        """The MOUVONE_TOKEN_URL to point the tool at."""
        return self.root + self.sim.config.token_path

    async def close(self) -> None:
        """Stop listening."""
        await self.runner.cleanup()


async def start(
    config: SimConfig | None = None,
    host: str = "127.0.0.1",
    port: int = 0,
    tls: ssl.SSLContext | None = None,
) -> RunningSimulator:
    """Start a simulator (port 0 picks a free one), over TLS with ``tls`` (or the config's
    certificate and key files)."""
    sim = Simulator(config)
    if tls is None and sim.config.tls_cert:
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls.load_cert_chain(sim.config.tls_cert, sim.config.tls_key or None)
    runner = web.AppRunner(sim.app(), access_log=None, handle_signals=False, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, host, port, ssl_context=tls)
    await site.start()
    server = site._server
    assert server is not None
    sockets = getattr(server, "sockets", None) or []
    bound = sockets[0].getsockname()[1] if sockets else port
    return RunningSimulator(sim, runner, host, bound, tls=tls is not None)
