"""`cancel-orders control` for a whole consumer group: the standing commands live in the hash
``GROUP:control`` (``paused``, ``rate``, ``stop``), which every consumer polls; each consumer
publishes its status in the hash ``GROUP:status`` under its own name. A stopped group stays
stopped (a consumer started meanwhile exits 4 at once) until `control resume`."""

from __future__ import annotations

import json
from typing import Any

from worker.queue.streams import Streams


def keys(group: str) -> tuple[str, str]:
    """The group's control hash and status hash."""
    return f"{group}:control", f"{group}:status"


class GroupChannel:
    """The consumer's end of the group's control hash."""

    def __init__(self, streams: Streams) -> None:
        self._streams = streams
        self._control, self._status = keys(streams.names.group)

    async def commands(self) -> dict[str, str]:
        """The group's standing commands."""
        found: Any = await self._streams.redis.hgetall(self._control)
        return {str(k): str(v) for k, v in found.items()}

    async def publish(self, status: dict[str, Any]) -> None:
        """This consumer's status."""
        text = json.dumps(status)
        await self._streams.redis.hset(self._status, self._streams.names.consumer, text)
