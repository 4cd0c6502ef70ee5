"""The files shipped in ``config/`` (the defaults, the outcome table), installed as the
``worker.defaults`` package."""

from __future__ import annotations

from importlib import resources
from pathlib import Path


def defaults_file(name: str) -> Path:
    """Path of a file shipped in ``config/`` (installed as the ``worker.defaults`` package)."""
    return Path(str(resources.files("worker.defaults").joinpath(name)))
