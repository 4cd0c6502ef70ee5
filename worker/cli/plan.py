"""`cancel-orders plan`: the orders a run would send, written to a plan file that a person
reviews and `apply` sends later; nothing is sent (with `--check`, each order is looked up)."""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from contextlib import ExitStack
from dataclasses import asdict
from pathlib import Path

from worker.cli.common import say, settings_from
from worker.cli.flags import RUN_GROUPS, keys_of
from worker.cli.inputs import source_from
from worker.domain.errors import ConfigError
from worker.domain.location import Location
from worker.ledger import check_target
from worker.runs.lifecycle import dry_claims
from worker.runtime.files import replaced
from worker.runtime.redaction import printable
from worker.settings import duration_s
from worker.sources import IdValidator, OrderInput
from worker.sources import plan as plans


def cmd_plan(args: argparse.Namespace) -> int:
    """`plan`: 0 when written with every ID valid, 1 when some IDs were invalid."""
    settings = settings_from(args, keys_of(RUN_GROUPS))
    settings.require_target()
    check_target(settings.ledger, settings.api_url)
    try:
        expires_in_s = duration_s(args.expires_in)
    except ValueError as exc:
        raise ConfigError(f"--expires-in: {exc}") from None
    with ExitStack() as stack:
        source = source_from(args, settings, stack)
        source.scan()
        order_ids, invalid, final = _to_send(source, settings.ledger)
        origin = _origin(args)
        predicted = None
        if args.check:
            from worker.runs.check import predictions  # noqa: PLC0415 - only with --check

            settings.require_credentials()
            validator = IdValidator(settings.id_pattern)
            predicted = predictions(
                settings,
                plans.PlanSource(order_ids, "the plan", validator),
                progress_bar=sys.stderr.isatty() and not args.no_progress,
            )
    key = settings.signing_key
    content = plans.make(
        order_ids,
        target=settings.api_url,
        token_host=settings.token_host,
        origin=origin,
        expires_in_s=expires_in_s,
        people={
            "operator": settings.operator,
            "reason": settings.reason,
            "ticket": settings.ticket,
        },
        predictions=predicted,
        key=key,
    )
    with replaced(args.output) as out:
        json.dump(content, out, indent=1)
        out.write("\n")
    lines = [
        f"Plan {args.output}: {len(order_ids)} orders for {settings.target_label}, digest "
        f"{content['digest']}{', signed' if key else ''}, expires at {content['expires_at']}",
        f"  by {content['operator']}, reason: {content['reason'] or '(no --reason given)'}"
        + (f", ticket {content['ticket']}" if content["ticket"] else ""),
        f"  not in it: {invalid} invalid, {final} already final in {settings.ledger}",
    ]
    if predicted is not None:  # what a reviewer weighs: the predicted outcome of each order
        counted = Counter(predicted.values())
        lines.append(
            "  predicted: " + ", ".join(f"{n} {outcome}" for outcome, n in counted.most_common())
        )
    lines.append(
        f"  nothing was sent; review it, then: cancel-orders apply {args.output} "
        f"--expect-digest {content['digest'][:16]}"
    )
    say(sys.stdout, "".join(printable(line) + "\n" for line in lines))
    return 1 if invalid else 0


def _to_send(source: OrderInput, ledger_path: Location) -> tuple[list[str], int, int]:
    """The valid, distinct IDs not final in the ledger, in input order; (IDs, invalid, final)."""
    seen: set[str] = set()
    order_ids: list[str] = []
    invalid = final = 0
    for claimed in dry_claims(source, ledger_path, force=False):
        invalid += len(claimed.invalid)
        final += len(claimed.skipped)
        for order_id in claimed.to_send:
            if order_id not in seen:
                seen.add(order_id)
                order_ids.append(order_id)
    return order_ids, invalid, final


def _origin(args: argparse.Namespace) -> dict[str, object]:
    """Where the orders came from: the input's name and sha256, or the selection's filters."""
    if getattr(args, "select", False):
        from worker.cli.selecting import filters_from  # noqa: PLC0415

        found = asdict(filters_from(args)).items()
        return {
            "selection": {k: v if isinstance(v, list | tuple) else str(v) for k, v in found if v}
        }
    if args.input == "-":
        return {"input": {"name": "<stdin>"}}
    return {"input": {"name": args.input, "sha256": plans.file_facts(Path(args.input))[0]}}
