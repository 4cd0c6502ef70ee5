"""A local MouvONE look-alike: token endpoint, DELETE and both GETs, gateway faults.

What each order does is chosen by the first three letters of its ID (see BEHAVIOURS), so a
batch can rehearse every outcome; the count of transient failures is the ID's last digit
(0 means every time). Random faults, latency and a gateway rate limit are settings.

The names below load on first use: the command line reads ``worker.simulator.config`` for the
flags of `simulate` without loading the server (aiohttp's web framework) into every command.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from worker.lazy import lazy_names

if TYPE_CHECKING:
    from worker.simulator.config import SimConfig
    from worker.simulator.model import BEHAVIOURS, SimStats
    from worker.simulator.running import RunningSimulator, start
    from worker.simulator.server import Simulator

__all__ = ["BEHAVIOURS", "RunningSimulator", "SimConfig", "SimStats", "Simulator", "start"]
_HOMES = {
    "SimConfig": "worker.simulator.config",
    "BEHAVIOURS": "worker.simulator.model",
    "SimStats": "worker.simulator.model",
    "RunningSimulator": "worker.simulator.running",
    "start": "worker.simulator.running",
    "Simulator": "worker.simulator.server",
}
__getattr__ = lazy_names(__name__, _HOMES)
