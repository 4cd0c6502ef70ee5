"""The event loop every command runs on (uvloop's where it is installed, else asyncio's), and
the garbage collector's settings for a long stream of requests.

At zero latency the event loop's own work (polling, callbacks, transports) is a fair share of
what a request costs the tool; uvloop does it in C. Its behaviour is asyncio's (signals, threads,
cancellation), so nothing else changes.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Coroutine, Iterable
from typing import Any, TypeVar

from worker.runtime.signals import loop_stops

T = TypeVar("T")

YOUNG_GC_THRESHOLD = 10_000  # objects allocated and not yet freed before a young collection
RECANCEL_S = 1.0  # a task still running this long after its cancel is cancelled again


def run(main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run(main)`` on the fastest loop available (SIGTERM and SIGHUP cancel it:
    ``runtime.signals``)."""
    with loop_stops(main) as coroutine:
        try:
            import uvloop  # noqa: PLC0415 - optional: not built for every platform
        except ImportError:
            return asyncio.run(coroutine)
        return uvloop.run(coroutine)


async def cancel_all(tasks: Iterable[asyncio.Future[Any]]) -> None:
    """Cancel ``tasks`` and wait until every one has ended, cancelling again any that is
    still running a second later.

    A library may lose a cancellation: on Python 3.11, ``asyncio.wait_for`` returns its
    awaitable's result when the cancel arrives just as that awaitable finishes (gh-86296), and
    the task goes on. The run's end must not wait on it for ever (a scheduled job that never
    exits holds the next one back); its errors are the task's done-callbacks' to report.
    """
    every = list(tasks)
    running = {task for task in every if not task.done()}
    while running:
        for task in running:
            task.cancel()
        _, running = await asyncio.wait(running, timeout=RECANCEL_S)
    for task in every:  # retrieved, as gather(return_exceptions=True) would
        if not task.cancelled():
            task.exception()


def settle_gc() -> None:
    """Before the requests start: move what is loaded so far out of the collector's sight (it
    lives as long as the process), and collect the young generation less often; cyclic
    garbage, which only the collector frees, still triggers a collection once 10,000 objects
    are waiting. (What it saves: docs/development.md, "The hot path".)
    """
    gc.freeze()
    gc.set_threshold(YOUNG_GC_THRESHOLD)
