"""A plan: the exact orders a later `apply` sends, reviewed in between, sealed by a digest.

`plan` writes it (sending nothing); `apply` refuses one that has expired, whose IDs no longer
hash to its digest (edited after review), or that was made for another target, and otherwise
is a run whose input is the plan's IDs and nothing else.
"""

from __future__ import annotations

import getpass
import hashlib
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from worker.domain.errors import ConfigError
from worker.sources import Batch

FORMAT = 1


def digest(order_ids: Sequence[str]) -> str:
    """sha256 of the sorted IDs, one a line: what a review approved."""
    return hashlib.sha256("\n".join(sorted(order_ids)).encode()).hexdigest()


def file_facts(path: Path) -> tuple[str, int]:
    """sha256 of a file's bytes and its line count (a last line without a newline counts):
    the input a plan or a run was made from."""
    digest = hashlib.sha256()
    lines = 0
    last = b"\n"
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
            lines += chunk.count(b"\n")
            last = chunk[-1:]
    return digest.hexdigest(), lines + (last != b"\n")


def os_user() -> str:
    """Who runs this: the OS user."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return str(os.getuid())


def make(
    order_ids: list[str],
    *,
    target: str,
    origin: dict[str, Any],
    expires_in_s: float,
    reason: str | None,
    operator: str | None = None,
    predictions: dict[str, str] | None = None,
) -> dict[str, Any]:
    """A plan's content."""
    now = datetime.now(UTC)
    plan: dict[str, Any] = {
        "format": FORMAT,
        "created_at": _iso(now),
        "expires_at": _iso(now + timedelta(seconds=expires_in_s)),
        "operator": operator or os_user(),
        "reason": reason,
        "target": target,
        **origin,
        "count": len(order_ids),
        "digest": digest(order_ids),
        "orders": order_ids,
    }
    if predictions is not None:
        plan["predictions"] = predictions
    return plan


@dataclass
class Plan:
    """A plan read back and checked."""

    path: Path
    orders: list[str]
    digest: str
    operator: str
    created_at: datetime
    target: str

    @property
    def age(self) -> str:
        """How old it is, for the confirmation."""
        minutes = int((datetime.now(UTC) - self.created_at).total_seconds() // 60)
        return f"{minutes // 60} h {minutes % 60} min" if minutes >= 60 else f"{minutes} min"


def load(path: Path, target: str, now: datetime | None = None) -> Plan:
    """The plan at ``path``, checked; ConfigError (exit 2, nothing sent) naming what is wrong."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path}: not a plan file: {exc}") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ConfigError(f"{path}: not a plan file of format {FORMAT}")
    orders = data.get("orders")
    if not isinstance(orders, list) or not all(isinstance(o, str) for o in orders):
        raise ConfigError(f"{path}: its orders are not a list of IDs")
    try:
        expires = datetime.fromisoformat(str(data["expires_at"]))
        created = datetime.fromisoformat(str(data["created_at"]))
    except (KeyError, ValueError):
        raise ConfigError(f"{path}: no valid created_at and expires_at") from None
    now = now or datetime.now(UTC)
    if now >= expires:
        late = int((now - expires).total_seconds())
        raise ConfigError(
            f"{path}: the plan expired at {data['expires_at']} ({late} s ago): make a new one "
            "and have it reviewed; nothing was sent"
        )
    sealed = str(data.get("digest", ""))
    if digest(orders) != sealed or data.get("count") != len(orders):
        raise ConfigError(
            f"{path}: its orders do not match its digest {sealed[:12]} (the file was changed "
            "after it was made): nothing was sent"
        )
    planned = str(data.get("target", ""))
    if planned.rstrip("/") != target.rstrip("/"):
        raise ConfigError(
            f"{path}: the plan was made for {planned}, not for {target}: nothing was sent"
        )
    who = str(data.get("operator", "?"))
    return Plan(path, orders, sealed, who, created, planned)


class PlanSource:
    """A plan's orders (valid and distinct: a plan holds only those), as an input."""

    def __init__(self, orders: list[str], name: str, sealed: str = "") -> None:
        self._orders = orders
        self.name = name
        self.digest = sealed  # the plan's digest, recorded by the run that applies it

    @classmethod
    def of(cls, plan: Plan) -> PlanSource:
        """The orders of a plan read back, named as the confirmation shows them."""
        name = (
            f"plan {plan.path}: {len(plan.orders)} orders, digest {plan.digest[:12]}, "
            f"made by {plan.operator} {plan.age} ago"
        )
        return cls(plan.orders, name, plan.digest)

    def scan(self) -> int:
        """The plan's count."""
        return len(self._orders)

    def batches(self, size: int) -> Iterator[Batch]:
        """Its orders, in the plan's order."""
        orders = self._orders
        for start in range(0, len(orders), size):
            yield [(order_id, None) for order_id in orders[start : start + size]]


def _iso(moment: datetime) -> str:
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")
