"""A plan: the exact orders a later `apply` sends, reviewed in between, sealed by a digest.

`plan` writes it (sending nothing); `apply` refuses one that has expired, whose fields no
longer hash to its digest (edited after review), whose digest is not the one approved
(--expect-digest), that is not signed with the plan key when one is set, or that was made for
another target; otherwise it is a run whose input is the plan's IDs and nothing else.
"""

from __future__ import annotations

import getpass
import hashlib
import hmac
import json
import os
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from worker.domain.errors import ConfigError
from worker.runtime.redaction import printable
from worker.sources import Batch, IdValidator

FORMAT = 2  # format 1 sealed only the IDs
UNSEALED = ("digest", "signature")  # every other field is covered by the digest
MIN_EXPECTED = 12  # --expect-digest: the shortest prefix accepted


def digest(plan: Mapping[str, Any]) -> str:
    """sha256 of the plan's canonical form: every field but the digest and the signature, as
    JSON with sorted keys and no spaces; an edit to any field (target, token host, times,
    operator, reason, ticket, IDs, predictions) changes it."""
    fields = {k: v for k, v in plan.items() if k not in UNSEALED}
    text = json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode()).hexdigest()


def signature(sealed: str, key: str) -> str:
    """HMAC-SHA256 of the digest under the plan key: only a holder of the key makes it."""
    return hmac.new(key.encode(), sealed.encode(), hashlib.sha256).hexdigest()


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
    token_host: str,
    origin: dict[str, Any],
    expires_in_s: float,
    people: Mapping[str, str | None],
    predictions: dict[str, str] | None = None,
    key: str | None = None,
) -> dict[str, Any]:
    """A plan's content, sealed by its digest (and signed with ``key`` when there is one).
    ``people``: operator, reason and ticket."""
    now = datetime.now(UTC)
    plan: dict[str, Any] = {
        "format": FORMAT,
        "created_at": _iso(now),
        "expires_at": _iso(now + timedelta(seconds=expires_in_s)),
        "operator": people.get("operator") or os_user(),
        "reason": people.get("reason"),
        "ticket": people.get("ticket"),
        "target": target,
        "token_host": token_host,
        **origin,
        "count": len(order_ids),
        "orders": order_ids,
    }
    if predictions is not None:
        plan["predictions"] = predictions
    plan["digest"] = digest(plan)
    if key:
        plan["signature"] = signature(plan["digest"], key)
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
    reason: str | None = None
    ticket: str | None = None
    token_host: str = ""
    predictions: dict[str, str] | None = None  # `plan --check`: order -> predicted outcome
    expires_at: str = ""  # as the plan says it (checked: a moment still to come)

    @property
    def age(self) -> str:
        """How old it is, for the confirmation."""
        minutes = int((datetime.now(UTC) - self.created_at).total_seconds() // 60)
        return f"{minutes // 60} h {minutes % 60} min" if minutes >= 60 else f"{minutes} min"


@dataclass(frozen=True)
class Seal:
    """What `apply` holds a plan to: the target it sends to, the digest a reviewer approved
    (--expect-digest, a prefix), the plan key (a plan must then be signed with it)."""

    target: str
    expect: str | None = None
    key: str | None = None


def load(path: Path, seal: Seal, now: datetime | None = None) -> Plan:
    """The plan at ``path``, checked; ConfigError (exit 2, nothing sent) naming what is wrong."""
    data = _read(path)
    orders = data.get("orders")
    if not isinstance(orders, list) or not all(isinstance(o, str) for o in orders):
        raise ConfigError(f"{path}: its orders are not a list of IDs")
    created = _moment(path, data, "created_at")
    expires = _moment(path, data, "expires_at")
    now = now or datetime.now(UTC)
    if now >= expires:
        late = int((now - expires).total_seconds())
        raise ConfigError(
            f"{path}: the plan expired at {printable(str(data['expires_at']))} ({late} s ago): "
            "make a new one and have it reviewed; nothing was sent"
        )
    sealed = data.get("digest")
    if not isinstance(sealed, str) or digest(data) != sealed or data.get("count") != len(orders):
        shown = printable(str(sealed))[:12]
        raise ConfigError(
            f"{path}: its fields do not match its digest {shown} (the file was changed after it "
            "was made): nothing was sent"
        )
    _check_approval(path, data, sealed, seal)
    planned = data.get("target")
    if not isinstance(planned, str) or planned.rstrip("/") != seal.target.rstrip("/"):
        raise ConfigError(
            f"{path}: the plan was made for {printable(str(planned))}, not for {seal.target}: "
            "nothing was sent"
        )
    return Plan(
        path,
        orders,
        sealed,
        _text(data, "operator") or "?",
        created,
        planned,
        reason=_text(data, "reason"),
        ticket=_text(data, "ticket"),
        token_host=_text(data, "token_host") or "",
        predictions=_predictions(data),
        expires_at=printable(str(data["expires_at"])),
    )


def _predictions(data: Mapping[str, Any]) -> dict[str, str] | None:
    found = data.get("predictions")
    if not isinstance(found, dict):
        return None
    return {str(order): str(outcome) for order, outcome in found.items()}


def review_lines(plan: Plan) -> list[str]:
    """What a person confirming `apply` needs of the plan beyond its count: why it was made
    (reason, ticket) and, with `plan --check`, the outcomes predicted then (escaped)."""
    why = plan.reason or "(no reason given)"
    lines = [f"Reason:  {why}" + (f" (ticket {plan.ticket})" if plan.ticket else "")]
    if plan.predictions:
        counted = Counter(plan.predictions.values())
        shown = ", ".join(f"{outcome} {n}" for outcome, n in counted.most_common())
        lines.append(f"Checked: predicted when planned: {shown}")
    return [printable(line) for line in lines]


def _read(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ConfigError(f"{path}: not a plan file: {printable(str(exc))}") from None
    if isinstance(data, dict) and data.get("format") == 1:
        raise ConfigError(
            f"{path}: a plan of format 1, whose seal covers its IDs only: make it again with "
            "this version's `plan` and have it reviewed; nothing was sent"
        )
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ConfigError(f"{path}: not a plan file of format {FORMAT}")
    return data


def _moment(path: Path, data: Mapping[str, Any], key: str) -> datetime:
    """An ISO-8601 time of the plan, with its time zone (without one it means nothing)."""
    try:
        moment = datetime.fromisoformat(str(data[key]))
    except (KeyError, ValueError):
        raise ConfigError(f"{path}: no valid {key} (an ISO-8601 time)") from None
    if moment.tzinfo is None:
        raise ConfigError(
            f"{path}: {key} {printable(str(data[key]))} has no time zone (e.g. Z or +01:00)"
        )
    return moment


def _check_approval(path: Path, data: Mapping[str, Any], sealed: str, seal: Seal) -> None:
    """--expect-digest and the plan key: what a reviewer approved, who could have made it."""
    if seal.expect is not None:
        expect = seal.expect.strip().lower()
        if len(expect) < MIN_EXPECTED or not sealed.startswith(expect):
            raise ConfigError(
                f"{path}: its digest {sealed[:12]} is not the approved one ({printable(expect)}, "
                f"--expect-digest: at least {MIN_EXPECTED} characters of it): nothing was sent"
            )
    if seal.key:
        signed = data.get("signature")
        if not isinstance(signed, str):
            raise ConfigError(
                f"{path}: the plan is not signed, and a plan key is set (MOUVONE_PLAN_KEY, "
                "--plan-key-file): make it with the key; nothing was sent"
            )
        if not hmac.compare_digest(signed, signature(sealed, seal.key)):
            raise ConfigError(
                f"{path}: its signature is not made with the plan key (MOUVONE_PLAN_KEY, "
                "--plan-key-file): nothing was sent"
            )


def _text(data: Mapping[str, Any], key: str) -> str | None:
    value = data.get(key)
    return str(value) if value is not None else None


class PlanSource:
    """A plan's orders as an input, each checked against the ID pattern again (a plan holds
    only valid IDs unless it was made otherwise: one that fails is `invalid`, never sent)."""

    def __init__(
        self, orders: list[str], name: str, validator: IdValidator, plan: Plan | None = None
    ) -> None:
        self._orders = orders
        self._validator = validator
        self.name = name
        self.plan = plan  # its digest, operator, reason and ticket are recorded with the run
        self.digest = plan.digest if plan is not None else ""
        self.expires_at = plan.expires_at if plan is not None else ""

    @classmethod
    def of(cls, plan: Plan, validator: IdValidator) -> PlanSource:
        """The orders of a plan read back, named as the confirmation shows them (escaped:
        the plan's text cannot steer the terminal)."""
        name = printable(
            f"plan {plan.path}: {len(plan.orders)} orders, digest {plan.digest[:12]}, "
            f"made by {plan.operator} {plan.age} ago"
        )
        return cls(plan.orders, name, validator, plan)

    def scan(self) -> int:
        """The plan's count."""
        return len(self._orders)

    def batches(self, size: int) -> Iterator[Batch]:
        """Its orders, in the plan's order."""
        orders = self._orders
        check = self._validator.check
        for start in range(0, len(orders), size):
            yield [
                check(order_id, f"{self.name}, order {start + n + 1}")
                for n, order_id in enumerate(orders[start : start + size])
            ]


def _iso(moment: datetime) -> str:
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")
