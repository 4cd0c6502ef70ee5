"""Progress: a bar on a terminal, a periodic `progress` event otherwise."""

from __future__ import annotations

import sys
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

import structlog

from worker.domain.models import RunSummary
from worker.runtime.clock import Clock, SystemClock
from worker.runtime.logs import flush_logs

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID

log = structlog.get_logger(__name__)

TICK_S = 0.2
RATE_WINDOW_S = 5.0  # the rate shown is the requests of the last few seconds
SHORT = {  # how the progress line names the outcomes
    "cancelled": "cancelled",
    "already_cancelled": "already",
    "not_found": "not found",
    "rejected": "rejected",
    "invalid": "invalid",
    "skipped": "skipped",
    "retryable_failed": "failed",
    "pending": "pending",
}


class ProgressReporter:
    """Shows how far a run is; reads the summary, never slows the workers."""

    def __init__(
        self,
        summary: RunSummary,
        requests: Callable[[], int],
        *,
        bar: bool,
        interval_s: float,
        clock: Clock | None = None,
    ) -> None:
        self._clock = clock or SystemClock()
        self._summary = summary
        self._requests = requests
        self._bar = bar
        self._interval_s = interval_s
        self.total: int | None = None
        self._started = self._clock.monotonic()
        self._progress: Progress | None = None
        self._task: TaskID | None = None
        self._recent: deque[tuple[float, int]] = deque()  # (time, requests) for the rate
        self.stage: Callable[[], str] = str  # what the run waits for, told by the pool

    def done(self) -> int:
        """Orders dealt with so far (answered, invalid, skipped, duplicate, left to the next
        run or taken by another)."""
        s = self._summary
        return s.answered + s.skipped_final + s.duplicates + s.failed_elsewhere + s.taken_elsewhere

    async def run(self) -> None:
        """Update until cancelled; gathered log lines are written at every tick."""
        if self._bar:
            self._start_bar()
        next_event = self._clock.monotonic() + self._interval_s
        try:
            while True:
                await self._clock.sleep(TICK_S)
                if self._bar:
                    self.update()
                elif self._clock.monotonic() >= next_event:
                    next_event += self._interval_s
                    self.update()
                flush_logs()
        finally:
            self.stop()
            flush_logs()

    def update(self) -> None:
        """Redraw the bar, or log one progress event."""
        done = self.done()
        if self._progress is not None and self._task is not None:
            self._progress.update(self._task, completed=done, total=self.total, counts=self.line())
            return
        elapsed = self._clock.monotonic() - self._started
        log.info(
            "progress",
            done=done,
            total=self.total,
            requests=self._requests(),
            elapsed_s=round(elapsed, 1),
            outcomes=dict(self._summary.outcomes),
            stage=self.stage() or "sending",
        )

    def line(self) -> str:
        """Counts by outcome and the current rate, for the progress line."""
        now = self._clock.monotonic()
        requests = self._requests()
        recent = self._recent
        recent.append((now, requests))
        while len(recent) > 2 and now - recent[0][0] > RATE_WINDOW_S:
            recent.popleft()
        span = now - recent[0][0]
        rate = (requests - recent[0][1]) / span if span > 0 else 0.0
        counts = self._summary.outcomes
        shown = " ".join(f"{SHORT.get(o, o)} {n}" for o, n in counts.items() if n)
        stage = self.stage()  # first: a narrow terminal cuts the end of the line, not the wait
        return (f"{stage} | " if stage else "") + f"{rate:.1f} req/s | {shown or 'starting'}"

    def _start_bar(self) -> None:
        from rich.console import Console  # noqa: PLC0415 - only on a terminal
        from rich.progress import (  # noqa: PLC0415
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
        )

        self._progress = Progress(
            BarColumn(bar_width=12),
            MofNCompleteColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            TextColumn("{task.fields[counts]}"),
            console=Console(file=sys.stderr),
            transient=True,
        )
        self._progress.start()
        self._task = self._progress.add_task("orders", total=self.total, counts="starting")

    def stop(self) -> None:
        """Remove the bar (idempotent)."""
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
