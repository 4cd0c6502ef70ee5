"""The code stays lint-clean (ruff) and type-clean (mypy --strict), as part of the suite."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )


def test_ruff() -> None:
    """ruff check reports nothing."""
    done = _run("ruff", "check", "--quiet", ".")
    assert done.returncode == 0, done.stdout + done.stderr


def test_ruff_format() -> None:
    """The code is formatted with ruff format."""
    done = _run("ruff", "format", "--check", "--quiet", ".")
    assert done.returncode == 0, done.stdout + done.stderr


def test_mypy_strict() -> None:
    """mypy in strict mode finds no error in the package."""
    done = _run("mypy")
    assert done.returncode == 0, done.stdout + done.stderr
