"""A local MouvONE look-alike: token endpoint, DELETE and both GETs, gateway faults.

What each order does is chosen by the first three letters of its ID (see BEHAVIOURS), so a
batch can rehearse every outcome; the count of transient failures is the ID's last digit
(0 means every time). Random faults, latency and a gateway rate limit are settings.
"""

from worker.simulator.config import SimConfig
from worker.simulator.model import BEHAVIOURS, SimStats
from worker.simulator.running import RunningSimulator, start
from worker.simulator.server import Simulator

__all__ = ["BEHAVIOURS", "RunningSimulator", "SimConfig", "SimStats", "Simulator", "start"]
