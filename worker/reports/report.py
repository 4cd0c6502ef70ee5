"""Summaries and exports of a ledger: table (for a person), JSON and CSV (for scripts)."""

from __future__ import annotations

import csv
import json
import sys
from contextlib import ExitStack
from pathlib import Path
from typing import TextIO

from worker.ledger import CSV_COLUMNS, Ledger
from worker.reports.html import write_html
from worker.reports.summary import summary
from worker.runtime.files import replaced
from worker.runtime.redaction import printable

TABLE_ORDER_LIMIT = 1000  # with --outcome, the table lists at most this many orders


def write_json(
    ledger: Ledger, out: TextIO, outcome: str | None = None, label: str | None = None
) -> None:
    """The summary as one JSON object."""
    json.dump(summary(ledger, outcome, label), out, indent=2)
    out.write("\n")


def write_csv(
    ledger: Ledger,
    out: TextIO,
    outcome: str | None = None,
    label: str | None = None,  # noqa: ARG001 - the writers share one signature
) -> None:
    """One row per order, header ``order_id,outcome,http_status,error_code,message,...``; a
    text cell a spreadsheet would run as a formula is neutralised (``safe_cell``), the ID of
    an invalid order included."""
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for row in ledger.rows(outcome):
        writer.writerow(safe_cell(cell) for cell in row)


FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_safe(cell: str) -> str:
    """A cell that a spreadsheet would read as a formula (it starts with ``=``, ``+``, ``-``,
    ``@``, a tab or a carriage return: OWASP "CSV injection") gets a leading single quote, which
    spreadsheets show as text. Valid order IDs are never altered (they cannot start so); JSON
    and the ledger keep the text as the API sent it."""
    return "'" + cell if cell.startswith(FORMULA_STARTS) else cell


def safe_cell(value: object) -> object:
    """A CSV cell as every CSV of the tool writes it: text made ``spreadsheet_safe``."""
    return spreadsheet_safe(value) if isinstance(value, str) else value


def write_table(
    ledger: Ledger, out: TextIO, outcome: str | None = None, label: str | None = None
) -> None:
    """The summary for a person; with ``outcome``, the orders too."""
    data = summary(ledger, outcome, label)
    predicted = label is not None and label.startswith("preflight")
    out.write(render_counts({**data, "only": outcome, "predicted": predicted}))
    if outcome:
        out.write(f"\nOrders with outcome {outcome}:\n")
        for n, row in enumerate(ledger.rows(outcome)):
            if n >= TABLE_ORDER_LIMIT:
                out.write(f"  ... (first {TABLE_ORDER_LIMIT} shown; use --format csv for all)\n")
                break
            order_id, _, status, code, message, attempts, _updated = row
            out.write(
                printable(
                    f"  {order_id}  http={status or '-'}  code={code or '-'}  "
                    f"attempts={attempts}  {message or ''}".rstrip()
                )
                + "\n"
            )


def write_report(
    ledger: Ledger, out: TextIO, fmt: str, outcome: str | None = None, label: str | None = None
) -> None:
    """The report in one of the formats (table, json, csv, html); ``label`` names a scratch
    ledger (a results stream, a preflight) instead of its temporary path."""
    if fmt == "html":
        write_html(ledger, out, outcome, label)
        return
    writer = {"table": write_table, "json": write_json, "csv": write_csv}[fmt]
    writer(ledger, out, outcome, label=label)


def open_output(path: Path | None, stack: ExitStack) -> TextIO:
    """Standard output, or a file readable by its owner only that replaces ``path`` when
    ``stack`` closes (a symlink there is replaced, never followed)."""
    if path is None:
        return sys.stdout
    return stack.enter_context(replaced(path))


def _predicted(outcome: str) -> str:
    """An outcome as `check` predicts it: nothing was cancelled."""
    return "would cancel" if outcome == "cancelled" else f"would be {outcome}"


def render_counts(data: dict[str, object]) -> str:
    """The outcome and error-code counts as aligned text."""
    where = str(data["ledger"])
    lines = [where[0].upper() + where[1:] if " " in where else f"Ledger: {where}"]
    last = data.get("last_run")
    if isinstance(last, dict):
        ended = (
            f"exit {last['exit_code']}"
            if last.get("exit_code") is not None
            else "never ended (stopped hard: resume it with the same command)"
        )
        lines.append(
            f"Last run: {last['run_id']} ({last['command']}), started {last['started_at']}, {ended}"
        )
        if last.get("base_url"):
            lines.append(f"Target: {last['base_url']}")
    lines.append(f"Orders: {data['total']}")
    lines.append("")
    predicted = bool(data.get("predicted"))
    outcomes = data["outcomes"]
    assert isinstance(outcomes, dict)
    only = data.get("only")  # --outcome: that row alone, not six rows of zeros
    names = {name: _predicted(name) if predicted else name for name in outcomes}
    wide = max([20, *(len(name) + 2 for name in names.values())])  # a prediction's: longer
    lines.append(f"{'predicted outcome' if predicted else 'outcome':<{wide}}{'orders':>10}")
    lines.extend(
        f"{names[name]:<{wide}}{count:>10}"
        for name, count in outcomes.items()
        if only is None or name == only
    )
    codes = data["error_codes"]
    assert isinstance(codes, dict)
    if codes:
        width = max(20, *(len(c) + 2 for c in codes))
        lines.append("")
        lines.append(f"{'error code':<{width}}{'orders':>10}")
        lines.extend(f"{code:<{width}}{count:>10}" for code, count in codes.items())
    return "".join(printable(line) + "\n" for line in lines)  # API text cannot steer a terminal


def render_run(data: dict[str, object]) -> str:
    """The end-of-run summary for a person."""
    dry = bool(data.get("dry_run"))
    head = "Dry run (nothing sent)" if dry else f"Run {data['run_id']}"
    lines = [
        f"{head}: exit {data['exit_code']}" + (f" ({data['reason']})" if data.get("reason") else "")
    ]
    outcomes = data["outcomes"]
    assert isinstance(outcomes, dict)
    if data.get("target"):
        lines.append(f"  target: {data['target']}")
    lines.append(_count("orders read", data["orders_read"]))
    lines.append(_count("already final", data["skipped_final"], "   (in the ledger: not sent)"))
    lines.append(_count("duplicates", data["duplicates"], "   (sent once)"))
    if data.get("failed_elsewhere"):
        why = "   (retryable_failed since this run began: left to the next run)"
        lines.append(_count("failed in another run", data["failed_elsewhere"], why))
    if data.get("taken_elsewhere"):
        why = "   (this run's lease lapsed: another run took or answered them)"
        lines.append(_count("taken by another run", data["taken_elsewhere"], why))
    lines.extend(_dry_lines(data, outcomes) if dry else sent_lines(data, outcomes))
    codes = data.get("error_codes")
    if isinstance(codes, dict) and codes:
        lines.append("  error codes: " + ", ".join(f"{c} {n}" for c, n in codes.items()))
    if data.get("not_read"):
        lines.append(_count("not read from input", data["not_read"], "   (the run stopped first)"))
    if data.get("resume"):
        # After a stop, one instruction: the same command finishes the claimed orders (looked
        # up first only if they may have been sent) and reads the rest of the input.
        # an abort (3), or a setting found wrong once the run began (2: the API's or the
        # token endpoint's host unreachable): the same command alone would stop the same way
        first = "first fix what stopped it (above), then " if data["exit_code"] in (2, 3) else ""
        # an `apply`: its plan is refused once expired (then: a new plan, reviewed again)
        before = (
            f" before the plan expires at {data['resume_before']}"
            if data.get("resume_before")
            else ""
        )
        lines.extend((f"next: {first}resume with the same command{before}:", f"  {data['resume']}"))
    elif not dry:
        lines.extend(
            _next_steps(outcomes, str(data.get("ledger", "")), bool(data.get("failed_elsewhere")))
        )
    return "".join(printable(line) + "\n" for line in lines)  # API text cannot steer a terminal


def _dry_lines(data: dict[str, object], outcomes: dict[str, int]) -> list[str]:
    lines = [
        _count("would send", data["would_send"]),
        _count("invalid", outcomes.get("invalid", 0)),
    ]
    layout = data.get("input")
    if isinstance(layout, dict) and layout:
        lines.append(
            f"  read column {layout.get('column')!r}, separated by "
            f"{layout.get('separator')!r}, encoding {layout.get('encoding')}"
        )
    first = data.get("first_invalid")
    if isinstance(first, list) and first:
        lines.append("  first invalid IDs at: " + ", ".join(str(f) for f in first))
    return lines


def sent_lines(data: dict[str, object], outcomes: dict[str, int]) -> list[str]:
    """The counts of a run that sent: its outcomes, requests, pauses, learned rate, outage."""
    lines = [_count(name, count) for name, count in outcomes.items() if count]
    took = f"   in {data['elapsed_s']} s ({data['rate_per_s']}/s)"
    lines.append(_count("requests", data["requests"], took))
    if data.get("paused_s"):
        paused = " s   (429 / quota Retry-After)"
        lines.append(_count("paused by the gateway", data["paused_s"], paused))
    if data.get("lowest_rate") is not None:
        lines.append(_count("rate lowered to", data["lowest_rate"], "/s (after 429 answers)"))
    if data.get("outage_s"):
        lines.append(_count("API outage", data["outage_s"], " s   (5xx, timeouts: nothing sent)"))
    return lines


def _count(label: str, value: object, after: str = "") -> str:
    """One line of a summary's counts: every value ends in the same column."""
    return f"  {label:<21}{value:>10}{after}"


def _next_steps(outcomes: dict[str, int], ledger: str, failed_elsewhere: bool) -> list[str]:
    """What a person can do next, given this run's outcomes (and orders another run failed)."""
    where = f" --ledger {ledger}" if ledger else ""
    steps = [
        f"  {name} orders: cancel-orders report{where} --outcome {name}"
        for name in ("rejected", "not_found", "invalid", "skipped")
        if outcomes.get(name)
    ]
    if outcomes.get("retryable_failed") or outcomes.get("pending") or failed_elsewhere:
        steps.append(
            f"  to send the retryable and pending orders again: cancel-orders retry{where}"
        )
    return ["next:", *steps] if steps else []
