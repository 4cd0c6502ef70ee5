"""Who holds an order on a shared ledger: a claim's decision for one known order, and whether
a run's process is gone (a run on the same machine can tell)."""

from __future__ import annotations

import os
import socket
import uuid
from pathlib import Path
from typing import Any

from worker.domain.models import Result
from worker.ledger.plan import Plan
from worker.ledger.schema import FINAL_VALUES


def process_prefix() -> str:
    """This machine's boot and PID namespace: a PID means the same process only under both."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        space = Path("/proc/self/ns/pid").stat().st_ino
    except OSError:  # not Linux: no run is ever judged dead by its PID
        return f"{socket.gethostname()}/{uuid.uuid4()}/"
    return f"{boot}/{space}/"


def alive(pid: int) -> bool:
    """True unless no process has this PID (here)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True


def decide(
    plan: Plan,
    order_id: str,
    invalid: Result | None,
    row: tuple[Any, ...] | None,
    final: dict[str, str],
    run_id: str,
    stamp: str,
    force: bool,
) -> None:
    """One known order of a claim: row = (outcome, holder, updated_at, uncertain, held,
    failed_elsewhere) when this claim locked it; None when it is final (``final``) or another
    claim is deciding it. An order another run ended `retryable_failed` after this one began
    had its attempts from that run (two hosts given the same input would otherwise each spend
    them): it is left to the next run, unless ``force``."""
    if row is None:
        if order_id in final:
            plan.skipped.append(final[order_id])
        elif invalid is not None:
            plan.invalid.append(invalid)
        else:
            plan.held.append(order_id)
        return
    outcome, holder, updated_at, uncertain, held, failed_elsewhere = row
    mine = holder == run_id
    if mine and updated_at != stamp:  # claimed by this run from an earlier line
        plan.duplicates += 1
    elif held and not mine:  # pending under another run that lives
        plan.held.append(order_id)
    elif failed_elsewhere and not force:
        plan.failed_elsewhere.append(order_id)
    elif outcome in FINAL_VALUES and not force:
        plan.skipped.append(outcome)
    elif invalid is not None:
        plan.invalid.append(invalid)
    else:
        plan.to_send.append(order_id)
        if uncertain and not mine:
            plan.uncertain.add(order_id)
