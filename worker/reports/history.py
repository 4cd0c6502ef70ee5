"""The ledger's history for people and for tools: the runs, one order's attempts, the attempt
log as JSON lines or CSV, and one run's report."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Iterator
from typing import TextIO

from worker.ledger import CSV_COLUMNS
from worker.ledger.audit import AuditLog
from worker.ledger.schema import ATTEMPT_COLUMNS
from worker.reports.report import safe_cell
from worker.runtime.redaction import printable

AUDIT_COLUMNS = (*ATTEMPT_COLUMNS, "trace_id")  # the trace id each request carried

RUNS_CSV = (
    "run_id",
    "started_at",
    "finished_at",
    "operator",
    "host",
    "reason",
    "ticket",
    "command",
    "target",
    "requests",
    "outcomes",
    "exit_code",
)


def write_runs(runs: list[dict[str, object]], out: TextIO, fmt: str) -> None:
    """`runs`: newest first, as a table, JSON or CSV."""
    if fmt == "json":
        json.dump(runs, out, indent=2)
        out.write("\n")
        return
    if fmt == "csv":
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(RUNS_CSV)
        for run in runs:
            writer.writerow(safe_cell(v) for v in _run_row(run))
        return
    if not runs:
        out.write("No run recorded in this ledger.\n")
        return
    for run in runs:
        out.writelines(printable(line) + "\n" for line in _run_lines(run))


def _run_row(run: dict[str, object]) -> list[object]:
    outcomes = run.get("outcomes")
    return [
        run["run_id"],
        run["started_at"],
        run["finished_at"],
        run.get("operator"),
        run.get("host"),
        run.get("reason"),
        run.get("ticket"),
        run["command"],
        _target(run),
        run.get("requests"),
        " ".join(f"{k}={v}" for k, v in outcomes.items()) if isinstance(outcomes, dict) else "",
        run["exit_code"],
    ]


def _run_lines(run: dict[str, object]) -> tuple[str, str, str]:
    """One run in three lines: when, who, why, what it did, how it ended (each line shown
    printable on its own: a newline in a reason is escaped, not a line of its own)."""
    ended = "running, or stopped hard" if run["exit_code"] is None else f"exit {run['exit_code']}"
    who = run.get("operator") or "?"
    why = f"  reason: {run['reason']}" if run.get("reason") else ""
    ticket = f"  ticket: {run['ticket']}" if run.get("ticket") else ""
    outcomes = run.get("outcomes")
    counts = (
        ", ".join(f"{k} {v}" for k, v in outcomes.items())
        if isinstance(outcomes, dict) and outcomes
        else "no order"
    )
    return (
        f"{run['run_id']}  {run['command']}  {ended}  by {who}"
        f"{' on ' + str(run['host']) if run.get('host') else ''}",
        f"  {run['started_at']} -> {run['finished_at'] or '-'}  target {_target(run)}",
        f"  {run.get('requests', 0)} requests: {counts}{why}{ticket}",
    )


def _target(run: dict[str, object]) -> str:
    details = run.get("details")
    if isinstance(details, dict) and details.get("target"):
        return str(details["target"])
    return str(run.get("base_url") or "-")


def write_history(
    order_id: str, current: tuple[object, ...] | None, rows: list[dict[str, object]], out: TextIO,
    fmt: str,
) -> None:  # fmt: skip
    """`history ORDER_ID`: every attempt across the runs, with each run's who and why."""
    now = dict(zip(CSV_COLUMNS, current, strict=True)) if current else None
    if fmt == "json":
        json.dump({"order_id": order_id, "current": now, "attempts": rows}, out, indent=2)
        out.write("\n")
        return
    if now is None:
        out.write(f"Order {order_id}: not in this ledger\n")
    else:
        out.write(
            printable(
                f"Order {order_id}: {now['outcome']} (error code {now['error_code'] or '-'}), "
                f"updated {now['updated_at']}"
            )
            + "\n"
        )
    if not rows:
        out.write("  no request recorded\n")
    run = None
    for row in rows:
        if row["run_id"] != run:
            run = row["run_id"]
            why = f", reason: {row['reason']}" if row.get("reason") else ""
            ticket = f", ticket {row['ticket']}" if row.get("ticket") else ""
            out.write(
                printable(
                    f"  run {run} ({row.get('command')}) by {row.get('operator')}{why}{ticket}"
                )
                + "\n"
            )
        answer = row["http_status"] if row["http_status"] is not None else "no answer"
        out.write(
            printable(
                f"    {row['sent_at']}  {row['method']:<6} #{row['attempt']}  {answer}  "
                f"{row['error_code'] or ''}  {row['latency_ms']} ms  id {row['request_id']}"
                f"{'  (' + str(row['response_id']) + ')' if row.get('response_id') else ''}"
            ).rstrip()
            + "\n"
        )


def write_attempts(rows: Iterable[dict[str, object]], out: TextIO, fmt: str) -> int:
    """`audit`: the attempt log as JSON lines (one object a line) or CSV; how many rows."""
    count = 0
    if fmt == "csv":
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(AUDIT_COLUMNS)
        for row in rows:
            writer.writerow(safe_cell(row.get(c)) for c in AUDIT_COLUMNS)
            count += 1
        return count
    for row in rows:
        out.write(json.dumps(row, separators=(",", ":")) + "\n")
        count += 1
    return count


def write_run_report(
    audit: AuditLog, run: dict[str, object], out: TextIO, fmt: str, outcome: str | None
) -> None:
    """`report --run ID`: the run (who, why, what, how it ended) and the orders it dealt with,
    each with its current outcome."""
    rows = (r for r in audit.run_orders(str(run["run_id"])) if outcome in (None, r[1]))
    if fmt == "csv":
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(CSV_COLUMNS)
        for row in rows:
            writer.writerow(safe_cell(v) for v in row)
        return
    if fmt == "json":
        orders = [dict(zip(CSV_COLUMNS, r, strict=True)) for r in rows]
        json.dump({"run": run, "orders": orders}, out, indent=2)
        out.write("\n")
        return
    out.writelines(printable(line) + "\n" for line in _run_lines(run))
    out.write("\nOrders it dealt with (outcome as it is now):\n")
    for order_id, current, status, code, _message, attempts, _updated in _first(rows, 1000):
        out.write(
            printable(f"  {order_id}  {current}  http={status or '-'}  code={code or '-'}  ")
            + f"attempts={attempts}\n"
        )


def _first(rows: Iterator[tuple[object, ...]], n: int) -> Iterator[tuple[object, ...]]:
    for k, row in enumerate(rows):
        if k == n:
            return
        yield row
