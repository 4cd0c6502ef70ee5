"""Every setting's flag, made from the settings model: the flag is the field's name
(``max_attempts`` -> ``--max-attempts``), its help the field's description with its variable
and its shipped default, its metavar and group from the field. A command takes whole groups.
"""

from __future__ import annotations

import argparse
import tomllib
import types
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import SecretStr
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from worker.domain.defaults import defaults_file
from worker.settings import ENV_PREFIX, Settings
from worker.simulator.config import SIMULATE_FLAGS, SimConfig

GROUPS = {  # name -> title in --help, in the order shown
    "target": "the API",
    "auth": "credentials",
    "network": "network",
    "rate": "rate and concurrency",
    "retry": "retries and outages",
    "input": "input",
    "ledger": "ledger",
    "lease": "shared ledger and queue leases",
    "failures": "failure stop",
    "preconditions": "preconditions",
    "canary": "canary",
    "cap": "size cap",
    "stops": "deadlines and stopping",
    "progress": "progress",
    "queue": "queue mode (Redis)",
    "serve": "metrics endpoint",
    "export": "metrics at the end",
    "job": "job name",
    "logs": "logs",
    "audit": "audit and notifications",
    "plan": "plan seal",
}
RUN = ("target", "auth", "network", "rate", "retry", "input", "ledger", "lease", "failures", "cap")
RUN_GROUPS = (
    *RUN,
    *("preconditions", "canary", "stops", "progress", "export", "job", "logs", "audit", "plan"),
)
CONSUME_GROUPS = (
    *(g for g in RUN_GROUPS if g not in ("cap", "canary", "export", "audit", "plan")),
    "queue",
    "serve",
)
ENQUEUE_GROUPS = ("queue", "serve", "input", "cap", "logs")
REPEATABLE = ("notify_url",)  # flags that may be given more than once
REPORT_KEYS = ("ledger", "redis_url", "results_stream", "log_format", "log_level")


def flag(key: str) -> str:
    """The flag of a setting."""
    return "--" + key.replace("_", "-")


def keys_of(groups: Sequence[str]) -> list[str]:
    """The settings of these groups, in the model's order."""
    return [key for key, field in _fields().items() if _extra(field)["group"] in groups]


def add_settings(parser: argparse.ArgumentParser, keys: Sequence[str]) -> None:
    """--config and one flag for each of these settings, grouped as the model groups them."""
    top = parser.add_argument_group("settings (flag > environment > .env > --config)")
    top.add_argument("--config", type=Path, metavar="FILE", help="TOML settings file")
    fields = _fields()
    groups: dict[str, Any] = {}
    for key in sorted(keys, key=lambda k: list(GROUPS).index(_extra(fields[k])["group"])):
        field = fields[key]
        name = _extra(field)["group"]
        if name not in groups:
            groups[name] = parser.add_argument_group(f"settings: {GROUPS[name]}")
        kind = _kind(field)
        if kind is bool:  # None when absent, so lower-precedence sources still count
            groups[name].add_argument(
                flag(key), dest=key, action="store_const", const=True, help=_help(key, field)
            )
        elif key in REPEATABLE:  # each one given is kept; the setting joins them with commas
            groups[name].add_argument(
                flag(key),
                dest=key,
                action="append",
                metavar=_extra(field)["metavar"],
                help=_help(key, field),
            )
        else:
            groups[name].add_argument(
                flag(key),
                dest=key,
                type=kind,
                metavar=_extra(field)["metavar"],
                help=_help(key, field),
            )


def _fields() -> dict[str, FieldInfo]:
    return {k: f for k, f in Settings.model_fields.items() if f.json_schema_extra is not None}


def _extra(field: FieldInfo) -> dict[str, str]:
    extra = field.json_schema_extra
    assert isinstance(extra, dict)
    return {k: str(v) for k, v in extra.items()}


def _kind(field: FieldInfo) -> Any:
    """The argparse type of a field: its annotation without None; a secret, a choice or a
    union (the ledger: a path or a URL) is read as text (the model checks it)."""
    kind = field.annotation
    if get_origin(kind) in (Union, types.UnionType):
        kinds = [arg for arg in get_args(kind) if arg is not type(None)]
        kind = kinds[0] if len(kinds) == 1 else str  # a path or a URL: the model tells
    if kind is SecretStr or get_origin(kind) is Literal:
        return str
    return kind


def _help(key: str, field: FieldInfo) -> str:
    default = _shipped().get(key, field.default)
    if default is PydanticUndefined:
        default = None
    shown = ""
    if isinstance(default, float):
        shown = f", {default:g}"
    elif default not in (None, False, ""):
        shown = f", {default}"
    return f"{field.description} ({ENV_PREFIX}{key.upper()}{shown})"


@cache
def _shipped() -> dict[str, Any]:
    with defaults_file("defaults.toml").open("rb") as f:
        return tomllib.load(f)


def add_simulate_arguments(parser: argparse.ArgumentParser) -> None:
    """The simulator's flags."""
    defaults = SimConfig()
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1)")
    parser.add_argument("--port", type=int, default=8080, help="port (8080; 0 picks one)")
    for flag, (field, kind, text) in SIMULATE_FLAGS.items():
        default = getattr(defaults, field)
        parser.add_argument(
            flag, dest=field, type=kind, default=default, help=f"{text} ({default})"
        )
