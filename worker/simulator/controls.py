"""What tests, rehearsals and the demo do to a running simulator: outages, expired tokens,
requests held on the wire, waiting for a count of DELETEs, and the /_sim/ endpoints."""

from __future__ import annotations

import asyncio
import time

from aiohttp import web

from worker.simulator.model import SimStats


class SimControls:
    """The simulator's controls (a part of Simulator)."""

    stats: SimStats
    _tokens: dict[str, float]
    _outage_until: float
    _outage_kind: str
    _open: asyncio.Event
    _held: asyncio.Event
    holding: int
    _waiters: list[tuple[int, asyncio.Future[None]]]

    def expire_tokens(self) -> None:
        """Make every issued token invalid (a token expiring mid-run)."""
        self._tokens.clear()

    def outage(self, seconds: float, kind: str = "503") -> None:
        """For ``seconds`` from now, every API request fails: ``503``, ``502html`` (an HTML
        page), ``reset`` (the connection is dropped) or ``stall`` (no answer for stall_s)."""
        self._outage_until = time.monotonic() + seconds
        self._outage_kind = kind

    def hold(self) -> None:
        """Keep every DELETE arriving from now on waiting, unanswered, until release() (a test
        that must know its client's requests are on the wire)."""
        self._open.clear()

    def release(self) -> None:
        """Let the held DELETEs through."""
        self._open.set()

    async def wait_for_held(self, count: int) -> None:
        """Return once ``count`` DELETEs are held."""
        while self.holding < count:
            self._held.clear()
            await self._held.wait()

    async def wait_for_deletes(self, count: int) -> None:
        """Return once at least ``count`` DELETEs have arrived (for tests and rehearsals)."""
        if sum(self.stats.deletes.values()) >= count:
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((count, future))
        await future

    def _notify(self) -> None:
        if not self._waiters:
            return
        seen = sum(self.stats.deletes.values())
        for count, future in list(self._waiters):
            if seen >= count:
                self._waiters.remove((count, future))
                if not future.done():
                    future.set_result(None)

    async def stats_handler(self, _request: web.Request) -> web.Response:
        """GET /_sim/stats: what the simulator saw."""
        return web.json_response(self.stats.as_dict())

    async def outage_handler(self, request: web.Request) -> web.Response:
        """POST /_sim/outage?seconds=S&kind=503|502html|reset|stall: start an outage."""
        try:
            seconds = float(request.query.get("seconds", "10"))
        except ValueError:
            return web.json_response({"error": "seconds must be a number"}, status=400)
        kind = request.query.get("kind", "503")
        if kind not in ("503", "502html", "reset", "stall"):
            return web.json_response({"error": "kind: 503, 502html, reset or stall"}, status=400)
        self.outage(seconds, kind)
        return web.json_response({"outage_s": seconds, "kind": kind})

    async def reset_handler(self, _request: web.Request) -> web.Response:
        """POST /_sim/reset: forget the counts (orders keep their state)."""
        self.stats = SimStats()
        return web.json_response({"reset": True})
