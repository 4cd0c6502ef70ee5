"""Who runs a command and why, from what input, with which limits: recorded with the run
(`runs`, `history`, the report and the notification show it)."""

from __future__ import annotations

import argparse
from pathlib import Path

from worker.cli.filters import FILTER_DESTS
from worker.domain.models import RunRecord
from worker.runs.lifecycle import run_record
from worker.settings import Settings
from worker.sources import OrderInput
from worker.sources.plan import file_facts


def who_from(
    args: argparse.Namespace, settings: Settings, source: OrderInput, command_line: str
) -> RunRecord:
    """The run's record: operator, host, reason, ticket (`apply`: the plan's, unless a flag
    says), and in ``details`` the command line (secrets masked), the version, the input, the
    target and the limits in force."""
    plan = getattr(source, "plan", None)
    people = {key: getattr(plan, key, None) for key in ("operator", "reason", "ticket")}
    return run_record(settings, command_line, input_facts(args, source), people)


def input_facts(args: argparse.Namespace, source: OrderInput) -> dict[str, object]:
    """What the run read: a file's name, sha256 and line count; a selection's filters; a
    plan's digest; for `retry`, the ledger's unfinished orders."""
    if args.command == "apply":
        return {"name": str(args.plan), "plan": getattr(source, "digest", "")}
    if args.command == "retry":
        return {"name": "the ledger's retryable_failed and pending orders"}
    if getattr(args, "select", False):
        given = {k: getattr(args, k) for k in FILTER_DESTS if getattr(args, k, None) is not None}
        return {"name": "<selection>", "selection": given}
    path = getattr(source, "path", None)
    facts: dict[str, object] = {"name": source.name}
    if isinstance(path, Path):
        facts["sha256"], facts["lines"] = file_facts(path)
    return facts
