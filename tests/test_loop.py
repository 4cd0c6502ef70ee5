"""The event loop the commands run on, and the collector's settings."""

from __future__ import annotations

import asyncio
import gc
import signal
import sys

import pytest

from worker.runtime import loop
from worker.runtime.signals import Stopped, raise_on_stopping_signals


async def _loop_module() -> str:
    return type(asyncio.get_running_loop()).__module__


def test_commands_run_on_uvloop_when_installed() -> None:
    pytest.importorskip("uvloop")
    assert loop.run(_loop_module()).startswith("uvloop")


def test_without_uvloop_asyncio_runs_them(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)  # import uvloop raises ImportError
    assert loop.run(_loop_module()).startswith("asyncio")


async def _sigterm_handler() -> object:
    return signal.getsignal(signal.SIGTERM)


def test_sigterm_raises_between_event_loops_and_keeps_its_default_within() -> None:
    """Between event loops SIGTERM raises Stopped (the command says why and exits 143); while
    a loop runs it keeps its default, where uvloop would swallow the exception."""
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGHUP)
    try:
        raise_on_stopping_signals()
        assert loop.run(_sigterm_handler()) == signal.SIG_DFL
        assert signal.getsignal(signal.SIGTERM) not in (signal.SIG_DFL, None)  # else it kills
        with pytest.raises(Stopped) as stopped:
            signal.raise_signal(signal.SIGTERM)
        assert (stopped.value.signal, stopped.value.exit_code) == (signal.SIGTERM, 143)
    finally:
        signal.signal(signal.SIGTERM, before[0])
        signal.signal(signal.SIGHUP, before[1])


def test_settle_gc_freezes_what_is_loaded_and_collects_young_objects_less_often() -> None:
    before = gc.get_threshold()
    try:
        loop.settle_gc()
        assert gc.get_freeze_count() > 0
        assert gc.get_threshold() == (loop.YOUNG_GC_THRESHOLD, *before[1:])
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)


async def test_cancel_all_ends_a_task_that_lost_its_cancel(monkeypatch: pytest.MonkeyPatch) -> None:
    """A task that goes on after its cancel (a library lost it, as Python 3.11's wait_for
    does) is cancelled again until it ends; the others end at the first."""
    monkeypatch.setattr(loop, "RECANCEL_S", 0.01)
    stubborn_cancels = 0

    async def stubborn() -> None:
        nonlocal stubborn_cancels
        while True:
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                stubborn_cancels += 1
                if stubborn_cancels == 1:
                    continue  # the first cancel lost
                raise

    async def failing() -> None:
        raise ValueError("its own error")

    tasks = [asyncio.ensure_future(stubborn()), asyncio.ensure_future(asyncio.sleep(3600))]
    broken = asyncio.ensure_future(failing())
    await asyncio.sleep(0)
    await asyncio.wait_for(loop.cancel_all([*tasks, broken]), 10)
    assert all(task.cancelled() for task in tasks)
    assert stubborn_cancels == 2
    assert isinstance(broken.exception(), ValueError)  # retrieved, not raised
