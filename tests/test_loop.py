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


async def _signalled(signum: int, cleaned: list[str]) -> None:
    """Raise ``signum`` in this process once the loop runs, and wait for ever."""
    asyncio.get_running_loop().call_soon(signal.raise_signal, signum)
    try:
        await asyncio.Event().wait()
    finally:
        cleaned.append("cleaned up")


@pytest.mark.parametrize("uvloop", [True, False])
def test_sigterm_ends_a_command_in_an_event_loop_and_between_them(
    uvloop: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Within an event loop SIGTERM cancels the loop's coroutine (its clean-up runs) and the
    loop ends in Stopped (uvloop would swallow an exception raised by a signal handler);
    between loops SIGTERM raises Stopped. Either way the command exits 143."""
    if not uvloop:
        monkeypatch.setitem(sys.modules, "uvloop", None)
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGHUP)
    try:
        raise_on_stopping_signals()
        cleaned: list[str] = []
        with pytest.raises(Stopped) as stopped:
            loop.run(_signalled(signal.SIGTERM, cleaned))
        assert (stopped.value.signal, stopped.value.exit_code) == (signal.SIGTERM, 143)
        assert cleaned == ["cleaned up"]
        assert signal.getsignal(signal.SIGTERM) not in (signal.SIG_DFL, None)  # else it kills
        with pytest.raises(Stopped):
            signal.raise_signal(signal.SIGTERM)
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
