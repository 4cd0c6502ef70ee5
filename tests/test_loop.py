"""The event loop the commands run on, and the collector's settings."""

from __future__ import annotations

import asyncio
import gc
import sys

import pytest

from worker.runtime import loop


async def _loop_module() -> str:
    return type(asyncio.get_running_loop()).__module__


def test_commands_run_on_uvloop_when_installed() -> None:
    pytest.importorskip("uvloop")
    assert loop.run(_loop_module()).startswith("uvloop")


def test_without_uvloop_asyncio_runs_them(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)  # import uvloop raises ImportError
    assert loop.run(_loop_module()).startswith("asyncio")


def test_settle_gc_freezes_what_is_loaded_and_collects_young_objects_less_often() -> None:
    before = gc.get_threshold()
    try:
        loop.settle_gc()
        assert gc.get_freeze_count() > 0
        assert gc.get_threshold() == (loop.YOUNG_GC_THRESHOLD, *before[1:])
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
