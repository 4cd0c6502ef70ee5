"""The event loop every command runs on: uvloop's where it is installed, else asyncio's.

At zero latency the event loop's own work (polling, callbacks, transports) is a fair share of
what a request costs the tool; uvloop does it in C. Its behaviour is asyncio's (signals, threads,
cancellation), so nothing else changes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def run(main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run(main)`` on the fastest loop available."""
    try:
        import uvloop  # noqa: PLC0415 - optional: not built for every platform
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)
