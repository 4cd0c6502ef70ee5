"""Stopping a run: the state every part of it shares, and signals turned into that state."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from contextlib import suppress
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import structlog

from worker.domain.errors import WorkerError
from worker.runtime.clock import Clock
from worker.runtime.redaction import redact
from worker.runtime.signals import stopping_signals
from worker.settings import Settings

log = structlog.get_logger(__name__)

T = TypeVar("T")


class RunControl:
    """Stop and abort state shared by every part of a run. Setting it never blocks."""

    def __init__(self) -> None:
        self.stop_event = asyncio.Event()
        self.hurry_event = asyncio.Event()  # a second signal: do not wait for requests in flight
        self.exit_code: int | None = None
        self.reason: str | None = None
        self.requests = 0
        self.in_flight: Callable[[], int] = lambda: 0  # told on the first signal
        self.grace_s = 0.0

    def count_request(self) -> None:
        """One more request sent to the API."""
        self.requests += 1

    @property
    def stopping(self) -> bool:
        """True once the run must not start anything new."""
        return self.stop_event.is_set()

    def abort(self, reason: str, exit_code: int = 3) -> None:
        """Stop the run; the first reason wins."""
        first = self.exit_code is None
        if first:
            self.exit_code = exit_code
            self.reason = redact.clean(reason)
        self.stop_event.set()  # state first: the log line below may fail, the stop may not
        if first:
            log.error("run_aborted", reason=reason, exit_code=exit_code)

    def task_ended(self, task: asyncio.Task[Any]) -> None:
        """A done-callback for the run's tasks: one that dies stops the run with its reason
        (a refusal it met, else an internal error, exit 3)."""
        if task.cancelled() or (error := task.exception()) is None:
            return
        if isinstance(error, WorkerError):
            self.abort(str(error), error.exit_code)
        else:
            self.abort(f"internal error: a task of the run stopped: {error!r}")

    def stop_by_limit(self, reason: str) -> None:
        """A limit the operator set was reached (a deadline, a stop file): stop as at a signal,
        exit 4; nothing is wrong with the API, and the same command resumes."""
        first = self.exit_code is None
        if first:
            self.exit_code = 4
            self.reason = reason
        self.stop_event.set()
        if first:
            log.warning("run_stopped_by_limit", reason=reason, exit_code=4)

    def interrupt(self, exit_code: int, signal_name: str) -> None:
        """A signal asked the run to stop (130 for SIGINT, 143 for SIGTERM, 129 for SIGHUP). A
        signal while the run is already stopping asks it not to wait for the requests in flight
        (they stay `pending`) and keeps the first reason."""
        if self.stopping:
            self.hurry_event.set()
            log.warning("run_interrupted_again", signal=signal_name)
            return
        self.exit_code = exit_code
        self.reason = f"interrupted by {signal_name}" + (
            " (its terminal closed)" if signal_name == "SIGHUP" else ""
        )
        self.stop_event.set()
        log.warning(
            "run_interrupted",
            signal=signal_name,
            in_flight=self.in_flight(),
            waits_s=self.grace_s,
            detail=f"nothing new is sent; the {self.in_flight()} requests in flight get up to "
            f"{self.grace_s:g}s to be answered and recorded. Another {signal_name} stops at once: "
            "they stay pending and are looked up before they are sent again",
        )


async def with_signals(control: RunControl, work: Awaitable[T]) -> T:
    """Await ``work`` with the stopping signals turned into ``control.interrupt``."""
    loop = asyncio.get_running_loop()
    signals = stopping_signals()
    for signum, code in signals:
        loop.add_signal_handler(signum, control.interrupt, code, signum.name)
    try:
        return await work
    finally:
        for signum, _ in signals:
            with suppress(Exception):
                loop.remove_signal_handler(signum)


def limits_watcher(settings: Settings, control: RunControl, clock: Clock) -> Awaitable[None] | None:
    """The watcher of --until, --run-time and --stop-file (exit 4), or None without them, or
    when the run stops before anything is sent: a deadline already passed (exit 4), a stop file
    that cannot be checked (exit 2)."""
    ahead = settings.deadline_in_s(datetime.now().astimezone())
    if ahead is None and settings.stop_file is None:
        return None
    if ahead is not None and ahead <= 0:  # passed before sending starts: nothing is sent
        control.stop_by_limit(
            "the deadline had passed before anything was sent (--until / --run-time)"
        )
        return None
    if settings.stop_file is not None:
        try:
            _exists(settings.stop_file)
        except OSError as exc:  # a brake that cannot be read: nothing is sent
            why = exc.strerror or str(exc)
            control.abort(f"--stop-file {settings.stop_file}: cannot be checked ({why})", 2)
            return None
    deadline = None if ahead is None else clock.monotonic() + ahead
    log.info("run_limits", deadline_in_s=ahead, stop_file=str(settings.stop_file or "") or None)
    return watch_limits(control, deadline, settings.stop_file, clock)


async def watch_limits(
    control: RunControl, deadline: float | None, stop_file: Path | None, clock: Clock
) -> None:
    """Stop the run (exit 4) at ``deadline`` (the clock's monotonic time) or once ``stop_file``
    exists, checked every second; until cancelled."""
    while not control.stopping:
        now = clock.monotonic()
        if deadline is not None and now >= deadline:
            control.stop_by_limit("the deadline was reached (--until / --run-time)")
            return
        if stop_file is not None and (why := _stop_asked(stop_file)):
            control.stop_by_limit(why)
            return
        wait = STOP_FILE_CHECK_S if deadline is None else min(STOP_FILE_CHECK_S, deadline - now)
        await clock.sleep(max(wait, 0.0))


STOP_FILE_CHECK_S = 1.0


def _exists(path: Path) -> bool:
    """One stat a second: not worth a thread."""
    return path.exists()


def _stop_asked(path: Path) -> str | None:
    """Why the stop file stops the run: it exists, or it can no longer be checked (a brake
    that cannot be read counts as pulled: the same command resumes); None to go on."""
    try:
        return f"the stop file {path} exists (--stop-file)" if _exists(path) else None
    except OSError as exc:
        return f"the stop file {path} can no longer be checked ({exc.strerror or exc})"
