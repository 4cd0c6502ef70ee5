"""The event loop every command runs on: uvloop's where it is installed, else asyncio's.

At zero latency the event loop's own work (polling, callbacks, transports) is a fair share of
what a request costs the tool; uvloop does it in C. Its behaviour is asyncio's (signals, threads,
cancellation), so nothing else changes. ``MOUVONE_EVENT_LOOP=asyncio`` keeps the standard loop.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def run(main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run(main)`` on the fastest loop available."""
    if os.environ.get("MOUVONE_EVENT_LOOP", "uvloop") != "asyncio":
        try:
            import uvloop  # noqa: PLC0415 - optional: not built for every platform
        except ImportError:
            pass
        else:
            return uvloop.run(main)
    return asyncio.run(main)
