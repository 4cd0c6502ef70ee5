"""The signals that stop a command, with their exit statuses: SIGINT 130, SIGTERM 143 and SIGHUP
129 (the terminal closed: an SSH session lost).

A run turns them into a graceful stop (``pipeline.control.with_signals``). Elsewhere SIGTERM
and SIGHUP end the command as SIGINT does (KeyboardInterrupt), so that it says so and exits
with the signal's status: between event loops (reading and counting the input, the prompt, a
report) they raise ``Stopped``; within one (a selection, `check`'s look-ups, a notification)
they cancel the loop's main task, which then ends in ``Stopped``. Not by raising there: uvloop
hands an exception of a signal handler to its error handler, and the loop goes on. A second
signal within a loop ends the process at once (its default)."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any, TypeVar

T = TypeVar("T")


def stopping_signals() -> list[tuple[signal.Signals, int]]:
    """The signals that stop a command, with their exit statuses; SIGHUP only when it is not
    ignored: a process started under ``nohup`` goes on when its terminal closes."""
    signals = [signal.SIGINT, signal.SIGTERM]
    if signal.getsignal(signal.SIGHUP) is not signal.SIG_IGN:
        signals.append(signal.SIGHUP)
    return [(signum, 128 + signum) for signum in signals]


class Stopped(BaseException):
    """SIGTERM or SIGHUP outside a run. A BaseException, as KeyboardInterrupt is: no
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
def loop_stops(main: Coroutine[Any, Any, T]) -> Iterator[Coroutine[Any, Any, T]]:
    """``main`` as the coroutine to run in an event loop: where SIGTERM and SIGHUP raised
    ``Stopped``, they cancel it instead, and it ends in ``Stopped``; at their default outside
    its handling, and as they were once the loop has ended."""
    ours = [s for s in (signal.SIGTERM, signal.SIGHUP) if signal.getsignal(s) is _raise_stopped]
    for signum in ours:
        signal.signal(signum, signal.SIG_DFL)
    try:
        yield _cancelled_by(main, ours) if ours else main
    finally:
        for signum in ours:
            signal.signal(signum, _raise_stopped)


async def _cancelled_by(main: Coroutine[Any, Any, T], signals: list[signal.Signals]) -> T:
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    caught: list[int] = []

    def stop(signum: int) -> None:
        caught.append(signum)
        loop.remove_signal_handler(signum)  # a second one ends the process
        task.cancel()

    for signum in signals:
        loop.add_signal_handler(signum, stop, signum)
    try:
        return await main
    except asyncio.CancelledError:
        if caught:
            raise Stopped(caught[0]) from None
        raise
    finally:
        for signum in signals:
            loop.remove_signal_handler(signum)
