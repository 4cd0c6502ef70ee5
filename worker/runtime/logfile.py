"""--log-file: every JSON event written to a file as well; on a terminal, the per-order events
of orders that went well go there only, so that the progress line stays readable (warnings and
orders that need a person still print). The run's summary is printed as a table at the end, so
the console does not show its event too."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, MutableMapping
from pathlib import Path
from typing import Any

import structlog

from worker.runtime.files import appended

# Order events the console leaves to the log file (it shows the others: they need a person).
QUIET_OUTCOMES = frozenset({"cancelled", "already_cancelled", "pending"})
SHOWN_AS_TABLE = frozenset({"run_summary", "check_summary"})  # printed by the command at the end
PER_ORDER = "order"  # one event per order: the JSON log's (a file, or stderr off a terminal)


class LogFile:
    """Appends JSON lines to a file, gathered and written at each flush; a write that fails
    (a full disk) stops the file, counting what it lost, and never the run."""

    def __init__(self) -> None:
        self._handle: Any = None
        self._pending = bytearray()  # the lines gathered, copied as they come (as on stderr)
        self.lost = 0

    def open(self, path: Path) -> None:
        """Open (append, owner-only, a link not followed: ``appended``); ConfigError naming the
        path when it cannot be."""
        self.close()
        self._handle = os.fdopen(appended(path, "--log-file"), "ab")

    @property
    def active(self) -> bool:
        """A file is open."""
        return self._handle is not None

    def write(self, line: bytes) -> None:
        """Gather one line."""
        if self._handle is None:  # it failed: the line is lost
            self.lost += 1
            return
        pending = self._pending
        pending += line
        pending += b"\n"

    def flush(self) -> None:
        """Write what was gathered."""
        pending = self._pending
        if self._handle is None or not pending:
            return
        block = bytes(pending)
        del pending[: len(block)]
        try:
            self._handle.write(block)
            self._handle.flush()
        except (OSError, ValueError):
            self.lost += block.count(b"\n")
            with contextlib.suppress(OSError, ValueError):
                self._handle.close()
            self._handle = None

    def close(self) -> None:
        """Flush and close."""
        self.flush()
        if self._handle is not None:
            with contextlib.suppress(OSError, ValueError):
                self._handle.close()
            self._handle = None


LOG_FILE = LogFile()

Render = Callable[[Any, str, MutableMapping[str, Any]], bytes]


def _quiet(event_dict: MutableMapping[str, Any]) -> bool:
    return event_dict.get("event") == "order" and event_dict.get("outcome") in QUIET_OUTCOMES


class JsonTee:
    """The JSON chain with a log file: each line to the file, and to standard error unless it
    is an order that went well while on a terminal."""

    def __init__(self, render: Render, *, terminal: bool) -> None:
        self._render = render
        self._terminal = terminal

    def __call__(self, logger: Any, method: str, event_dict: MutableMapping[str, Any]) -> bytes:
        """The structlog processor."""
        quiet = self._terminal and _quiet(event_dict)
        line = self._render(logger, method, event_dict)
        LOG_FILE.write(line)
        if quiet:
            raise structlog.DropEvent
        return line


class ConsoleGate:
    """First of the console chain, a person's screen: the event as JSON to the log file (when
    there is one); nothing per order (the progress display counts them, the ledger and the JSON
    log hold them) and not the run's summary (printed as a table)."""

    def __init__(self, render: Render | None) -> None:
        self._render = render

    def __call__(
        self, logger: Any, method: str, event_dict: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        """The structlog processor."""
        if self._render is not None:
            LOG_FILE.write(self._render(logger, method, dict(event_dict)))
        event = event_dict.get("event")
        if event == PER_ORDER or event in SHOWN_AS_TABLE:
            raise structlog.DropEvent
        return event_dict
