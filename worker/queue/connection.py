"""From settings to a Redis connection with the group's names; and whether a Redis URL lets
others steer the consumers."""

from __future__ import annotations

import socket
from urllib.parse import urlsplit

from worker.domain.errors import ConfigError
from worker.queue import streams as streams_module
from worker.queue.streams import Names, Streams
from worker.settings import Settings, is_loopback


def names(settings: Settings) -> Names:
    """The stream names of these settings; the consumer defaults to the host name."""
    stream, group, results, dead = settings.queue_names
    return Names(
        stream=stream,
        group=group,
        consumer=settings.consumer or socket.gethostname(),
        results=results,
        dead=dead,
    )


def streams_for(settings: Settings) -> Streams:
    """A connection to the Redis of these settings; ConfigError without a URL."""
    if not settings.redis_url:
        raise ConfigError("missing setting: MOUVONE_REDIS_URL (--redis-url)")
    streams_module.PATIENCE_S = settings.outage_timeout  # Redis gets the API's patience
    return Streams(settings.redis_url, names(settings))


def open_redis_problem(url: str) -> str | None:
    """Why a Redis URL lets others steer the consumers, or None: no password to a host that is
    not loopback (whoever reaches it can enqueue orders to cancel with these credentials)."""
    parts = urlsplit(url)
    if parts.scheme == "unix" or is_loopback(parts.hostname or "localhost"):
        return None
    if not parts.password:
        return (
            "no password: whoever reaches this Redis can enqueue orders to cancel with these "
            "credentials; use an ACL user (redis://USER:PASSWORD@...) and rediss:// (TLS)"
        )
    return None
