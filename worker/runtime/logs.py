"""structlog set-up: console on a terminal, JSON otherwise, secrets redacted from every event."""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import sys
import time
from collections.abc import Mapping, MutableMapping
from pathlib import Path
from typing import Any, TextIO

import orjson
import structlog

from worker.runtime.logfile import LOG_FILE, ConsoleGate, JsonTee
from worker.runtime.redaction import escape_controls, redact


class UtcTimestamp:
    """``timestamp`` as ISO-8601 UTC with microseconds, like structlog's TimeStamper(fmt="iso",
    utc=True), with the date and time formatted once per second: it runs for every order."""

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def __call__(
        self, _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        """The structlog processor."""
        micros = time.time_ns() // 1000
        second, fraction = divmod(micros, 1_000_000)
        if second != self._second:
            self._second = second
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        event_dict["timestamp"] = "%s.%06dZ" % (self._prefix, fraction)  # noqa: UP031 - faster
        return event_dict


FLUSH_BYTES = 64 * 1024
FLUSH_INTERVAL_S = 0.2
BUFFERED = False  # set by configure(): only off a terminal


class _StderrLogger:
    """Writes each line to the current sys.stderr (a progress bar may have wrapped it).

    Off a terminal, debug and info lines are gathered and written in blocks (at most
    FLUSH_INTERVAL_S late, see flush_logs); warnings and errors are written at once, after
    whatever was gathered before them.
    """

    def __init__(self) -> None:
        # The lines gathered, copied into one buffer as they come: a line's own bytes are then
        # freed at once, and their memory reused for the next (a loop rendering and gathering
        # order events: 4.1 µs a line when the lines were kept in a list until joined, 2.7).
        self._pending = bytearray()
        self._last_flush = time.monotonic()

    def _write(self, message: str | bytes) -> None:
        self.flush()
        _emit(message + b"\n" if isinstance(message, bytes) else message + "\n")

    def _gather(self, message: str | bytes) -> None:
        if not BUFFERED or not isinstance(message, bytes):
            self._write(message)
            return
        pending = self._pending
        pending += message
        pending += b"\n"
        if len(pending) >= FLUSH_BYTES or time.monotonic() - self._last_flush >= FLUSH_INTERVAL_S:
            self.flush()

    def flush(self) -> None:
        """Write what was gathered."""
        self._last_flush = time.monotonic()
        pending = self._pending
        if pending:
            block = bytes(pending)
            del pending[: len(block)]  # (what another thread added meanwhile stays)
            _emit(block)

    debug = info = msg = log = _gather
    warning = warn = error = critical = exception = fatal = _write


def _emit(data: str | bytes) -> None:
    """Write to standard error; never raises. A write that fails (the reader of a pipe is gone,
    a full disk, EIO) is counted, and standard error is pointed at /dev/null from then on, so
    that nothing buffered can fail again (at exit, for instance): a log line is never worth an
    outcome, a signal handler or an exit status."""
    global LOST_LINES  # noqa: PLW0603 - one count for the process
    if LOST_LINES:
        LOST_LINES += _lines(data)
        return
    try:
        _write_stderr(data)
    except (OSError, ValueError):
        LOST_LINES += _lines(data)
        silence(sys.stderr)


def _lines(data: str | bytes) -> int:
    if isinstance(data, str):
        return max(1, data.count("\n"))
    return max(1, data.count(b"\n"))


def _write_stderr(data: str | bytes) -> None:
    stream = sys.stderr
    binary = getattr(stream, "buffer", None) if stream is sys.__stderr__ else None
    if binary is None or isinstance(data, str):
        # Text, or a wrapped stream (a progress bar's proxy keeps its bar below the lines).
        stream.write(data if isinstance(data, str) else data.decode("utf-8", "replace"))
        stream.flush()
        return
    stream.flush()
    binary.write(data)
    binary.flush()


def silence(stream: TextIO) -> None:
    """Point the stream's file descriptor at /dev/null, once it cannot be written (a closed
    pipe, a full disk): what was buffered for it is dropped with it, so nothing fails again,
    at exit for instance."""
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, stream.fileno())
        os.close(devnull)
    with contextlib.suppress(OSError, ValueError):
        stream.flush()


def lost_lines() -> int:
    """Log lines that could not be written (standard error or the log file failed)."""
    return LOST_LINES + LOG_FILE.lost


LOST_LINES = 0
_LOGGER = _StderrLogger()
atexit.register(_LOGGER.flush)
atexit.register(LOG_FILE.close)


def _stderr_logger(*_args: Any) -> _StderrLogger:
    return _LOGGER


def flush_logs() -> None:
    """Write any gathered log lines now (called periodically and at the end of a run)."""
    _LOGGER.flush()
    LOG_FILE.flush()


def _json_line(event: Any, **_kw: Any) -> bytes:
    """One JSON line; never raises, whatever a caller put in the event."""
    try:
        return orjson.dumps(event, default=str)
    except (TypeError, orjson.JSONEncodeError):
        pass
    try:  # keys that are not strings (rare: the option costs every line)
        return orjson.dumps(event, default=str, option=orjson.OPT_NON_STR_KEYS)
    except (TypeError, orjson.JSONEncodeError):
        return json.dumps(event, default=str).encode()


class JsonLine:
    """The whole JSON chain in one processor: level, timestamp, exception text, redaction and
    the line itself (one call instead of five: it runs once for every order)."""

    def __init__(self) -> None:
        self._stamp = UtcTimestamp()
        self._exc_info = structlog.processors.format_exc_info

    def __call__(self, logger: Any, method: str, event_dict: MutableMapping[str, Any]) -> bytes:
        """The structlog processor, returning the rendered line."""
        event_dict["level"] = "warning" if method == "warn" else method
        self._stamp(logger, method, event_dict)
        if "exc_info" in event_dict:
            event_dict = self._exc_info(logger, method, event_dict)
        line = _json_line(event_dict)
        if redact.in_json(line):
            line = _json_line(redact(logger, method, event_dict))
        return line


_FAST: JsonLine | None = None  # set by configure() when JSON info lines are on


def info_event(event: str, fields: dict[str, Any]) -> None:
    """Log one info event with these fields, as ``log.info(event, **fields)`` would, for events
    written once per order: in JSON format the line goes straight to the JSON processor and the
    writer, without the bound logger's copies of the fields (``fields`` is consumed)."""
    render = _FAST
    if render is None:
        structlog.get_logger().info(event, **fields)
        return
    fields["event"] = event
    _LOGGER.info(render(None, "info", fields))


def configure(
    log_format: str | None,
    level: str,
    secrets: Mapping[str, str] | None = None,
    log_file: Path | None = None,
) -> str:
    """Configure structlog once for the process; returns the format chosen. With ``log_file``
    every event is written there as JSON too (``worker.runtime.logfile``)."""
    for secret, shown in (secrets or {}).items():
        redact.add(secret, shown)
    global BUFFERED, _FAST  # noqa: PLW0603 - one logger for the process, configured once
    terminal = sys.stderr.isatty()
    fmt = log_format or ("console" if terminal else "json")
    BUFFERED = fmt == "json" and not terminal
    threshold = logging.getLevelNamesMapping()[level.upper()]
    json_line = JsonLine()
    processors: list[Any] = [json_line]
    _FAST = json_line if fmt == "json" and threshold <= logging.INFO else None
    if log_file is not None:
        LOG_FILE.open(log_file)
        processors = [JsonTee(json_line, terminal=terminal)]
        _FAST = None  # every line goes through the tee
    if fmt == "console":
        processors = [
            ConsoleGate(json_line if log_file is not None else None),
            structlog.processors.add_log_level,
            UtcTimestamp(),
            structlog.processors.format_exc_info,
            redact,
            escape_controls,
            structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty()),
        ]
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(threshold),
        logger_factory=_stderr_logger,
        cache_logger_on_first_use=True,
    )
    return fmt
