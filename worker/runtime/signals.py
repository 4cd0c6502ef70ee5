"""The signals that stop a command, with their exit statuses: SIGINT 130, SIGTERM 143 and SIGHUP
129 (the terminal closed: an SSH session lost).

A run turns them into a graceful stop (``pipeline.control.with_signals``). Between event
loops (reading and counting the input, waiting at the prompt, writing a report) SIGTERM and
SIGHUP raise ``Stopped``, as SIGINT raises KeyboardInterrupt, so that a command stopped there
says so and exits with the signal's status. While an event loop runs they keep their default
(an exception raised by a signal handler inside uvloop goes to its error handler, and the
loop goes on), unless a run handles them."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType


def stopping_signals() -> list[tuple[signal.Signals, int]]:
    """The signals that stop a command, with their exit statuses; SIGHUP only when it is not
    ignored: a process started under ``nohup`` goes on when its terminal closes."""
    signals = [(signal.SIGINT, 130), (signal.SIGTERM, 143)]
    if signal.getsignal(signal.SIGHUP) is not signal.SIG_IGN:
        signals.append((signal.SIGHUP, 129))
    return signals


class Stopped(BaseException):
    """SIGTERM or SIGHUP between event loops. A BaseException, as KeyboardInterrupt is: no
    ``except Exception`` swallows it."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signal = signal.Signals(signum)
        self.exit_code = 128 + signum


def _raise_stopped(signum: int, _frame: FrameType | None) -> None:
    raise Stopped(signum)


def raise_on_stopping_signals() -> None:
    """From now on SIGTERM and SIGHUP (unless ignored) raise ``Stopped`` between event loops."""
    for signum, _ in stopping_signals():
        if signum != signal.SIGINT:
            signal.signal(signum, _raise_stopped)


@contextmanager
def default_while_a_loop_runs() -> Iterator[None]:
    """SIGTERM and SIGHUP at their default within, where they raised ``Stopped``; as they were
    afterwards."""
    ours = [s for s in (signal.SIGTERM, signal.SIGHUP) if signal.getsignal(s) is _raise_stopped]
    for signum in ours:
        signal.signal(signum, signal.SIG_DFL)
    try:
        yield
    finally:
        for signum in ours:
            signal.signal(signum, _raise_stopped)
