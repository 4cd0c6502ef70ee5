"""The event loop every command runs on (uvloop's where it is installed, else asyncio's), and
the garbage collector's settings for a long stream of requests.

At zero latency the event loop's own work (polling, callbacks, transports) is a fair share of
what a request costs the tool; uvloop does it in C. Its behaviour is asyncio's (signals, threads,
cancellation), so nothing else changes.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

YOUNG_GC_THRESHOLD = 10_000  # objects allocated and not yet freed before a young collection


def run(main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run(main)`` on the fastest loop available."""
    try:
        import uvloop  # noqa: PLC0415 - optional: not built for every platform
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)


def settle_gc() -> None:
    """Before the requests start: move what is loaded so far out of the collector's sight (it
    lives as long as the process), and collect the young generation less often; cyclic
    garbage, which only the collector frees, still triggers a collection once 10,000 objects
    are waiting. (What it saves: docs/development.md, "The hot path".)
    """
    gc.freeze()
    gc.set_threshold(YOUNG_GC_THRESHOLD)
