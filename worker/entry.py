"""The ``cancel-orders`` command (and ``python -m worker``): the command line's ``main``, with
structlog imported without its optional rich support first.

The logs format a traceback as text before any renderer sees it, so structlog's rich support
(rich tracebacks in its console renderer) is never used; imported with structlog, rich and
pygments took 65 ms of every command's start. rich still loads, on first use, for a progress
bar on a terminal. A program that imports ``worker`` as a library keeps its own structlog as
it is."""

from __future__ import annotations

import sys


def _structlog_without_rich() -> None:
    if "structlog" in sys.modules or "rich" in sys.modules:
        return
    sys.modules["rich"] = None  # type: ignore[assignment]  # `import rich` fails: not found
    try:
        import structlog  # noqa: F401, PLC0415
    finally:
        del sys.modules["rich"]


def main() -> int:
    """Run the command line."""
    _structlog_without_rich()
    from worker.cli import main as command_line  # noqa: PLC0415 - after structlog

    return command_line()
