"""A local MouvONE look-alike: token endpoint, DELETE and both GETs, gateway faults.

What each order does is chosen by the first three letters of its ID (see BEHAVIOURS), so a
batch can rehearse every outcome; the count of transient failures is the ID's last digit
(0 means every time). Random faults, latency and a gateway rate limit are settings.

The names below load on first use: the command line reads ``worker.simulator.config`` for the
flags of `simulate` without loading the server (aiohttp's web framework) into every command.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from worker.simulator.config import SimConfig
    from worker.simulator.model import BEHAVIOURS, SimStats
    from worker.simulator.running import RunningSimulator, start
    from worker.simulator.server import Simulator

__all__ = ["BEHAVIOURS", "RunningSimulator", "SimConfig", "SimStats", "Simulator", "start"]
_HOMES = {
    "SimConfig": "config",
    "BEHAVIOURS": "model",
    "SimStats": "model",
    "RunningSimulator": "running",
    "start": "running",
    "Simulator": "server",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"worker.simulator.{home}"), name)
