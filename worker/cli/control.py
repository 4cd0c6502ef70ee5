"""`cancel-orders control`: steer a running run through its ledger, or a whole consumer group
through Redis (``--redis-url``): pause, resume, stop (exit 4), rate R, status. The run obeys
within a second; requests in flight finish."""

from __future__ import annotations

import argparse
import json
import math
from typing import Any

from worker.cli import CONTROL_KEYS
from worker.cli.common import settings_from
from worker.domain.errors import ConfigError
from worker.domain.location import PostgresUrl
from worker.ledger import control as ledger_control
from worker.runtime import loop as event_loop
from worker.runtime.redaction import printable
from worker.settings import Settings


def commands_for(action: str, value: str | None) -> dict[str, str]:
    """The standing commands an action sets."""
    if action == "rate":
        try:
            rate = float(value or "")
        except ValueError:
            rate = 0.0
        if not math.isfinite(rate) or rate <= 0:
            raise ConfigError(
                f"control rate: give a rate above 0 (requests per second), not {value}"
            )
        return {"rate": f"{rate:g}"}
    if value is not None:
        raise ConfigError(f"control {action}: takes no value ({value!r})")
    return {"pause": {"paused": "1"}, "resume": {"paused": "0", "stop": ""}, "stop": {"stop": "1"}}[
        action
    ]


def cmd_control(args: argparse.Namespace) -> int:
    """`control`: exit 0 when the command was handed over (or the status shown), 2 when there
    is nothing to steer."""
    settings = settings_from(args, CONTROL_KEYS)
    if args.ledger is None and settings.redis_url:
        return _group(settings, args.action, args.value)
    path = settings.ledger
    if isinstance(path, PostgresUrl):
        return _shared(path, settings.claim_idle, args)
    run_id = ledger_control.running_run(path)
    if args.action == "status":
        found = ledger_control.status(path, run_id)
        print(render_status(f"Run {run_id} on {path}", [found]))
        return 0
    ledger_control.command(path, run_id, commands_for(args.action, args.value))
    print(f"Run {run_id} on {path}: {_said(args)} (taken within a second)")
    if args.action == "rate":
        _say_capped(
            float(args.value), [{"consumer": run_id, **ledger_control.status(path, run_id)}]
        )
    return 0


def _shared(url: PostgresUrl, claim_idle: float, args: argparse.Namespace) -> int:
    """Every run living on a shared PostgreSQL ledger, steered at once."""
    from worker.ledger import pg_control  # noqa: PLC0415 - psycopg only here

    run_ids = pg_control.live_runs(url, claim_idle)
    if args.action == "status":
        print(render_status(_runs_on(len(run_ids), url), pg_control.statuses(url, run_ids)))
        return 0
    pg_control.command(url, run_ids, commands_for(args.action, args.value))
    print(f"{_runs_on(len(run_ids), url)}: {_said(args)} (taken within a second)")
    if args.action == "rate":
        _say_capped(float(args.value), pg_control.statuses(url, run_ids))
    return 0


def _runs_on(count: int, url: PostgresUrl) -> str:
    """``1 run on URL``, ``2 runs on URL``."""
    return f"{count} run{'' if count == 1 else 's'} on {url}"


def _group(settings: Settings, action: str, value: str | None) -> int:
    from worker.queue.connection import streams_for  # noqa: PLC0415 - redis only here
    from worker.queue.steering import keys  # noqa: PLC0415

    async def main() -> dict[str, Any]:
        streams = streams_for(settings)
        control_key, status_key = keys(streams.names.group)
        try:
            await streams.ping()
            if action != "status":
                wanted: Any = commands_for(action, value)
                await streams.redis.hset(control_key, mapping=wanted)
                # `rate`: whose ceiling is under it (_say_capped)
                published: Any = await streams.redis.hgetall(status_key) if action == "rate" else {}
                return {"consumers": published}
            standing: Any = await streams.redis.hgetall(control_key)
            found: Any = await streams.redis.hgetall(status_key)
            return {"standing": standing, "consumers": found}
        finally:
            await streams.close()

    group = settings.queue_names[1]
    answer = event_loop.run(main())
    consumers = [
        {"consumer": name, **_status_of(text)} for name, text in sorted(answer["consumers"].items())
    ]
    if action != "status":
        print(f"Group {group}: {action}{f' {value}' if value else ''} (taken within a second)")
        if action == "rate":
            _say_capped(float(value or 0), consumers)
        return 0
    standing = ", ".join(f"{k}={v}" for k, v in sorted(answer["standing"].items()) if v)
    print(render_status(f"Group {group} (standing: {standing or 'none'})", consumers))
    return 0


def _status_of(text: str) -> dict[str, Any]:
    """A consumer's published status; anyone who can write the hash may have written anything:
    what is not a JSON object is shown as unreadable."""
    try:
        status = json.loads(text)
    except (ValueError, RecursionError):
        status = None
    return status if isinstance(status, dict) else {"unreadable": True}


def _say_capped(asked: float, statuses: list[dict[str, Any]]) -> None:
    """After `control rate R`: the runs (or consumers) whose ceiling is under R, which go at
    their ceiling (from the status each last published; one of an earlier version published
    none)."""
    for status in statuses:
        ceiling = status.get("max_rate")
        if isinstance(ceiling, int | float) and ceiling < asked:
            print(
                printable(
                    f"  {status.get('consumer')}: at most {ceiling:g}/s, its ceiling "
                    "(--max-rate, else the --rate it started with)"
                )
            )


def _said(args: argparse.Namespace) -> str:
    return f"{args.action} {args.value}" if args.value else args.action


def render_status(title: str, statuses: list[dict[str, Any]]) -> str:
    """`control status` for a person, escaped (a status is anyone's text who can write it)."""
    lines = [title]
    if not any(statuses):
        lines.append("  no status yet: the run publishes it twice a second")
    for status in statuses:
        if not status:
            continue
        who = f"  {status['consumer']}: " if "consumer" in status else "  "
        if status.get("unreadable"):
            lines.append(f"{who}its status is not readable (not a JSON object)")
            continue
        total = status.get("total")
        done = f"{status.get('done', 0)}/{total}" if total is not None else str(status.get("done"))
        found = status.get("outcomes")
        counts = sorted(found.items()) if isinstance(found, dict) else []
        outcomes = ", ".join(f"{k} {v}" for k, v in counts)
        paused = "paused" if status.get("paused") else "running"
        stage = status.get("stage") or paused  # a run of an earlier version published no stage
        ceiling = f", at most {status['max_rate']}" if "max_rate" in status else ""
        lines.append(
            f"{who}{stage}, {done} done, rate {status.get('rate')}/s "
            f"(set {status.get('configured_rate')}{ceiling}), requests {status.get('requests')}, "
            f"at {status.get('updated_at')}"
        )
        if outcomes:
            lines.append(f"    {outcomes}")
    return "\n".join(printable(line) for line in lines)
