"""Opening a run's ledger: bound to one target, and never created or changed by a dry run."""

from __future__ import annotations

import tempfile
from contextlib import ExitStack
from pathlib import Path

from worker.domain.errors import ConfigError
from worker.ledger.store import Ledger


def check_target(path: Path, base_url: str) -> None:
    """ConfigError unless the ledger at ``path`` is new or belongs to ``base_url``: outcomes
    recorded against another target (a simulator, a staging gateway) must never make a run
    against this one skip orders. Checked before anything is sent, selections included."""
    if not path.is_file() or path.stat().st_size == 0:  # new, or left empty by a refused run
        return
    ledger = Ledger(path, readonly=True)
    try:
        bound = ledger.target()
    finally:
        ledger.close()
    if bound is not None and bound.rstrip("/") != base_url.rstrip("/"):
        raise ConfigError(
            f"{path}: this ledger belongs to {bound}, not to {base_url}: outcomes recorded "
            "there would make this run skip orders; use another --ledger for another target"
        )


def open_ledger(path: Path, *, dry: bool, stack: ExitStack) -> Ledger:
    """A run's ledger, closed with ``stack``. A dry run only reads: the existing ledger, or an
    empty throwaway one when there is none yet, so that it never creates or changes the file."""
    if dry:
        if not path.is_file():
            path = Path(stack.enter_context(tempfile.TemporaryDirectory())) / "dry.sqlite"
            Ledger(path).close()
        ledger = Ledger(path, readonly=True)
    else:
        ledger = Ledger(path)
    stack.callback(ledger.close)
    return ledger
