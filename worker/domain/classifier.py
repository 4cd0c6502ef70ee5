"""Pure classification: (HTTP status, API error code, transport failure) -> verdict.

The mapping is data, read from ``config/outcomes.toml`` or a user's override of it.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from worker.domain.defaults import defaults_file
from worker.domain.errors import ConfigError
from worker.domain.models import FINAL, Outcome


class Action(StrEnum):
    """What the dispatcher does with an answer."""

    FINAL = "final"
    RETRY = "retry"
    FATAL = "fatal"
    THROTTLE = "throttle"
    QUOTA = "quota"
    REAUTH = "reauth"


TRANSPORT_FAILURES = ("timeout", "connection", "unreadable")
# The error_code recorded for answers that carry no API code.
TRANSPORT_CODES = {
    "timeout": "TIMEOUT",
    "connection": "CONNECTION_ERROR",
    "unreadable": "UNREADABLE_RESPONSE",
    "abandoned": "NO_ANSWER",  # the run stopped before the answer came
}


@dataclass(frozen=True, slots=True)
class Verdict:
    """The classification of one answer."""

    action: Action
    outcome: Outcome | None = None  # set when action is FINAL


ANSWERED = frozenset(o.value for o in FINAL if o is not Outcome.SKIPPED)  # skipped: never sent


def _parse_verdict(value: Any, where: str) -> Verdict:
    if not isinstance(value, str):
        raise ConfigError(f"outcome table: {where}: verdict must be a string, got {value!r}")
    if value in ANSWERED:
        return Verdict(Action.FINAL, Outcome(value))
    if value in {a.value for a in Action if a is not Action.FINAL}:
        return Verdict(Action(value))
    allowed = sorted(ANSWERED | {a.value for a in Action} - {"final"})
    raise ConfigError(f"outcome table: {where}: unknown verdict {value!r} (one of {allowed})")


def _table(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(f"outcome table: {where}: must be a table, got {value!r}"[:300])
    return value


SUCCESS_NAMES = frozenset({Outcome.CANCELLED, Outcome.ALREADY_CANCELLED})


def _success_only_for_2xx(verdict: Verdict, status: str, code: str | None, where: str) -> Verdict:
    """A table that calls a failure a success would hide it from every report: only a 2xx, or
    a 400 with an explicit API code (ORDER_ALREADY_CANCELED), may mean the order is cancelled."""
    if verdict.outcome not in SUCCESS_NAMES or status.startswith("2"):
        return verdict
    if status == "400" and code is not None:
        return verdict
    raise ConfigError(
        f"outcome table: {where}: {verdict.outcome} is allowed only for a 2xx status or a 400 "
        "with an explicit code"
    )


@dataclass(frozen=True)
class OutcomeTable:
    """Lookup tables built once from the TOML data."""

    by_status: dict[str, Verdict]
    by_code: dict[str, dict[str, Verdict]]
    transport: dict[str, Verdict]
    default: Verdict

    @classmethod
    def load(cls, path: Path | None = None) -> OutcomeTable:
        """Read a table file (the shipped one when path is None)."""
        source = path or defaults_file("outcomes.toml")
        try:
            data = tomllib.loads(source.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"{source}: cannot read the outcome table: {exc}") from None
        return cls.from_dict(data, str(source))

    @classmethod
    def from_dict(cls, data: dict[str, Any], name: str = "table") -> OutcomeTable:
        """Validate and index the table's data."""
        by_status: dict[str, Verdict] = {}
        by_code: dict[str, dict[str, Verdict]] = {}
        for status, entry in _table(data.get("status", {}), f"{name}: status").items():
            where = f"{name}: status.{status}"
            entry = _table(entry, where)  # noqa: PLW2901
            if "verdict" in entry:
                by_status[status] = _success_only_for_2xx(
                    _parse_verdict(entry["verdict"], where), status, None, where
                )
            codes = _table(entry.get("codes", {}), f"{where}.codes")
            by_code[status] = {
                c: _success_only_for_2xx(_parse_verdict(v, f"{where}.codes.{c}"), status, c, where)
                for c, v in codes.items()
            }
        transport_table = _table(data.get("transport", {}), f"{name}: transport")
        transport = {
            kind: _success_only_for_2xx(
                _parse_verdict(transport_table.get(kind, "retry"), f"{name}: transport.{kind}"),
                "000",
                None,
                f"{name}: transport.{kind}",
            )
            for kind in TRANSPORT_FAILURES
        }
        default = _success_only_for_2xx(
            _parse_verdict(
                _table(data.get("default", {}), f"{name}: default").get("verdict", "retry"),
                f"{name}: default",
            ),
            "000",
            None,
            f"{name}: default",
        )
        return cls(by_status, by_code, transport, default)

    def classify(self, status: int | None, code: str | None, failure: str | None) -> Verdict:
        """Decide what an answer means; pure and total."""
        if failure is not None:
            return self.transport.get(failure, self.default)
        if status is None:
            return self.transport["connection"]
        key = str(status)
        if code is not None:
            for group in (key, f"{key[0]}xx"):
                found = self.by_code.get(group, {}).get(code)
                if found is not None:
                    return found
        return self.by_status.get(key) or self.by_status.get(f"{key[0]}xx") or self.default


def error_code_for(status: int | None, code: str | None, failure: str | None) -> str | None:
    """The error_code recorded for an answer: the API's, else a descriptive stand-in."""
    if code:
        return code
    if failure is not None:
        return TRANSPORT_CODES.get(failure, failure.upper())
    if status is None or status == 200:
        return None
    return f"HTTP_{status}"
