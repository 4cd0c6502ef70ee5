"""Redis Streams for queue mode: the connection, the stream names, and the Lua scripts that
make "is this entry still mine?" and the write that follows one atomic step.

``XACK`` accepts any consumer's entry and ``WATCH`` does not fire on ``XCLAIM``, so every check
of ownership lives inside a script together with the write it guards: a crash leaves both or
neither, and a retried script finds the entry acknowledged and does nothing the second time.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import redis.asyncio as aioredis
import structlog
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import (
    ClusterDownError,
    MasterDownError,
    OutOfMemoryError,
    ReadOnlyError,
    RedisError,
    ResponseError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from worker.domain.errors import ConfigError, WorkerError

log = structlog.get_logger(__name__)

T = TypeVar("T")
TRANSIENT = (RedisConnectionError, RedisTimeoutError, ConnectionError, OSError)
# Refusals that pass: out of memory, a replica after a failover, a master that is down, a
# script running, a cluster resharding. Retried like a lost connection.
REFUSALS = (OutOfMemoryError, ReadOnlyError, MasterDownError, TryAgainError, ClusterDownError)
PATIENCE_S = 300.0  # how long Redis may stay away or refuse before the command gives up
FAILING: set[str] = set()  # the calls now retrying through a failure (for /healthz)


class RedisUnavailableError(WorkerError):
    """Redis stayed unreachable, or kept refusing, longer than the patience: exit 3."""

    exit_code = 3


def is_passing(exc: BaseException) -> bool:
    """True for a failure that may pass: a lost connection or a refusal of the moment."""
    if isinstance(exc, TRANSIENT) or isinstance(exc, REFUSALS):  # noqa: SIM101 - tuples
        return True
    return isinstance(exc, ResponseError) and str(exc).startswith("BUSY")


@dataclass(frozen=True)
class Names:
    """The streams and the group of one deployment."""

    stream: str
    group: str
    consumer: str
    results: str
    dead: str

    @property
    def final(self) -> str:
        """Hash of order ID -> final outcome, written with each final result."""
        return f"{self.results}:final"

    @property
    def rate(self) -> str:
        """The group rate limiter's next free slot."""
        return f"{self.stream}:rate"


# KEYS: stream, final hash. ARGV: group, consumer, entry id, order id.
# -> {owned (0/1), final outcome or ""}
CHECK = """
local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1)
if #p == 0 or p[1][2] ~= ARGV[2] then return {0, ''} end
local final = redis.call('HGET', KEYS[2], ARGV[4])
if final then return {1, final} end
return {1, ''}
"""

# KEYS: stream, results, dead letters, final hash, the entry's done mark. ARGV: group,
# consumer, entry id, order id, final outcome or "", dead-letter reason or "", then the result's
# field/value pairs. -> 1 when written and acknowledged, 2 when this consumer had already done
# so (a reply lost on the way, the call sent again), 0 when the entry is another consumer's.
FINISH = """
local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1)
if #p == 0 or p[1][2] ~= ARGV[2] then
  if redis.call('GET', KEYS[5]) == ARGV[2] then return 2 end
  return 0
end
redis.call('SET', KEYS[5], ARGV[2], 'EX', 3600)
local fields = {}
for i = 7, #ARGV do fields[#fields + 1] = ARGV[i] end
if #fields > 0 then redis.call('XADD', KEYS[2], '*', unpack(fields)) end
if ARGV[5] ~= '' then redis.call('HSET', KEYS[4], ARGV[4], ARGV[5]) end
if ARGV[6] ~= '' then
  redis.call('XADD', KEYS[3], '*', 'order_id', ARGV[4], 'reason', ARGV[6],
             'entry_id', ARGV[3], 'deliveries', tostring(p[1][4]))
end
redis.call('XACK', KEYS[1], ARGV[1], ARGV[3])
return 1
"""

# KEYS: stream. ARGV: group, consumer, entry ids... Resets the idle time of the entries that are
# still this consumer's (without counting a delivery); returns the ids that are not.
REFRESH = """
local lost = {}
for i = 3, #ARGV do
  local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1)
  if #p == 0 or p[1][2] ~= ARGV[2] then
    lost[#lost + 1] = ARGV[i]
  else
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i], 'JUSTID')
  end
end
return lost
"""

# KEYS: dead letters, requests. ARGV: dead-letter entry id. Moves one dead letter back.
REDRIVE = """
local e = redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[1])
if #e == 0 then return 0 end
local f = e[1][2]
for i = 1, #f, 2 do
  if f[i] == 'order_id' then
    redis.call('XADD', KEYS[2], '*', 'order_id', f[i + 1])
    redis.call('XDEL', KEYS[1], ARGV[1])
    return 1
  end
end
redis.call('XDEL', KEYS[1], ARGV[1])
return 0
"""

# KEYS: slot key. ARGV: interval ms, pause ms (0 to take a slot). -> ms to wait for the slot.
# Server time, so every replica shares one clock.
SLOT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local nxt = tonumber(redis.call('GET', KEYS[1]) or '0')
local pause = tonumber(ARGV[2])
if pause > 0 then
  if now + pause > nxt then
    redis.call('SET', KEYS[1], string.format('%.3f', now + pause), 'PX', 60000 + pause)
  end
  return '0'
end
local slot = math.max(now, nxt)
redis.call('SET', KEYS[1], string.format('%.3f', slot + tonumber(ARGV[1])), 'PX', 60000)
return string.format('%.3f', slot - now)
"""


class _Redis(aioredis.Redis):
    """redis-py's client, with no cancellation lost.

    On Python 3.11, ``asyncio.wait_for`` returns its awaitable's result when a cancellation
    arrives just as that awaitable finishes, and the cancellation is lost (gh-86296, fixed in
    3.12); redis-py sends every command through it when a socket timeout is set. A task
    cancelled at that moment went on as if it had not been: a consumer's steering loop, stopped
    once the group was empty, polled Redis for ever and the process never exited. A command
    during which the task was asked to stop ends as cancelled, whatever it answered.
    """

    async def execute_command(self, *args: Any, **options: Any) -> Any:
        task = asyncio.current_task()
        asked = task.cancelling() if task is not None else 0
        try:
            return await super().execute_command(*args, **options)  # type: ignore[no-untyped-call]
        finally:
            if task is not None and task.cancelling() > asked:
                raise asyncio.CancelledError


class Streams:
    """One Redis connection with the scripts registered."""

    def __init__(self, url: str, names: Names) -> None:
        self.names = names
        self.url = url
        try:
            self.redis: aioredis.Redis = _Redis.from_url(
                url,
                decode_responses=True,
                encoding_errors="replace",  # an entry that is not UTF-8 is read, then refused
                socket_timeout=10,
                socket_connect_timeout=5,
                retry=Retry(ExponentialWithJitterBackoff(base=0.1, cap=2.0), 3),
                health_check_interval=30,
            )
        except ValueError as exc:
            raise ConfigError(f"--redis-url: {exc}") from None
        self.check = self.redis.register_script(CHECK)
        self.finish_script = self.redis.register_script(FINISH)
        self.refresh_script = self.redis.register_script(REFRESH)
        self.redrive_script = self.redis.register_script(REDRIVE)
        self.slot_script = self.redis.register_script(SLOT)

    async def close(self) -> None:
        """Close the connection pool."""
        await self.redis.aclose()

    async def ping(self, patience_s: float = 10.0) -> None:
        """Wait for Redis (with backoff) up to ``patience_s``; ConfigError if it stays away."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + patience_s
        delay = 0.2
        while True:
            try:
                await self.redis.ping()
            except TRANSIENT as exc:
                if loop.time() + delay > deadline:
                    where = self.url.split("@")[-1]
                    raise ConfigError(f"Redis at {where} is unreachable: {exc}") from None
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
            else:
                return

    async def ensure_group(self) -> None:
        """Create the consumer group (and the stream) unless they exist."""
        try:
            await self.redis.xgroup_create(
                self.names.stream, self.names.group, id="0", mkstream=True
            )
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def finish(
        self, entry_id: str, order_id: str, final: str, dead_reason: str, fields: Sequence[str]
    ) -> bool:
        """Write the result (and the dead letter), acknowledge; False if another consumer has
        the entry. True also when this consumer had already finished it: redis-py sends a
        script again when its reply was lost, and the second call finds the work done."""
        n = self.names
        done = await self.finish_script(
            keys=[n.stream, n.results, n.dead, n.final, f"{n.results}:done:{entry_id}"],
            args=[n.group, n.consumer, entry_id, order_id, final, dead_reason, *fields],
        )
        return int(done) in (1, 2)

    async def owned(self, entry_id: str, order_id: str) -> tuple[bool, str]:
        """(still this consumer's, the order's final outcome if already recorded)."""
        n = self.names
        owned, final = await self.check(
            keys=[n.stream, n.final], args=[n.group, n.consumer, entry_id, order_id]
        )
        return bool(owned), str(final)

    async def refresh(self, entry_ids: Sequence[str]) -> list[str]:
        """Keep these entries fresh; the ones another consumer has claimed."""
        if not entry_ids:
            return []
        n = self.names
        lost = await self.refresh_script(keys=[n.stream], args=[n.group, n.consumer, *entry_ids])
        return [str(x) for x in lost]


async def patiently(
    call: Callable[[], Awaitable[T]],
    stopping: Callable[[], bool],
    what: str,
    *,
    patience_s: float | None = None,
    where: str = "",
) -> T | None:
    """Run a Redis call, retrying through a lost connection or a passing refusal (out of
    memory, read-only replica, ...) with backoff, saying so each time; None if the process is
    stopping first; RedisUnavailableError, naming ``where`` (the server) and the refusal, once
    it has lasted longer than ``patience_s`` (PATIENCE_S unless given)."""
    patience = PATIENCE_S if patience_s is None else patience_s
    delay = 0.1
    loop = asyncio.get_running_loop()
    since: float | None = None
    while True:
        problem: BaseException
        try:
            answer = await call()
        except RedisError as exc:
            if not is_passing(exc):
                raise
            problem = exc
        except TRANSIENT as exc:
            problem = exc
        else:
            FAILING.discard(what)
            return answer
        FAILING.add(what)
        if stopping():
            return None
        now = loop.time()
        since = now if since is None else since
        if now - since > patience:
            at = f" at {where}" if where else ""
            raise RedisUnavailableError(
                f"Redis has been unavailable{at} for {now - since:.0f}s (during {what}): {problem}"
            ) from None
        log.warning("redis_unavailable", during=what, error=str(problem), retry_in_s=delay)
        await asyncio.sleep(min(delay, max(since + patience - now, 0.0) + 0.01))
        delay = min(delay * 2, 5.0)


def result_fields(values: dict[str, Any]) -> list[str]:
    """Flatten a result for XADD: field, value, ...; None becomes the empty string."""
    flat: list[str] = []
    for key, value in values.items():
        flat += [key, "" if value is None else str(value)]
    return flat


__all__ = [
    "TRANSIENT",
    "Names",
    "RedisError",
    "RedisUnavailableError",
    "Streams",
    "is_passing",
    "patiently",
    "result_fields",
]
