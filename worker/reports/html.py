"""`report --format html`: the page an operator acts on. One self-contained file (inline CSS
and SVG, no script, nothing fetched): the last run's who, why, input and limits; the outcome
counts as a chart and the error codes; the orders that need a person grouped by error code, each
with what the code means and what to do next; throughput and error rate over clock time; and
the ledger's runs."""

from __future__ import annotations

import tomllib
from collections.abc import Iterable
from datetime import datetime, timedelta
from functools import cache
from html import escape
from typing import TextIO

from worker.domain.defaults import defaults_file
from worker.domain.errors import LedgerError
from worker.domain.models import SUCCESS, Outcome
from worker.ledger import Ledger
from worker.reports.summary import summary

ATTENTION = ("rejected", "not_found", "invalid", "skipped", "retryable_failed", "pending")
ATTENTION_LIMIT = 2000
MAX_POINTS = 120
COLOURS = {
    "cancelled": "#2e7d32",
    "already_cancelled": "#66bb6a",
    "not_found": "#f9a825",
    "rejected": "#c62828",
    "invalid": "#8e24aa",
    "skipped": "#5c6bc0",
    "retryable_failed": "#ef6c00",
    "pending": "#757575",
}
STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222}
h1{font-size:1.5em}h2{font-size:1.15em;margin-top:2em;border-bottom:1px solid #ddd}
table{border-collapse:collapse}td,th{padding:2px 10px;text-align:left;border-bottom:1px solid #eee}
td.n{text-align:right;font-variant-numeric:tabular-nums}.muted{color:#777}
svg text{font:12px system-ui,sans-serif}svg text.tick{fill:#555;font-size:11px}
#run th{font-weight:normal;color:#555;width:6em}details.group{margin:1em 0;padding:.3em .8em;
border:1px solid #ddd;border-radius:4px}details.group>summary{cursor:pointer;font-size:1.05em}
p.meaning{margin:.4em 0;color:#333}p.next{margin:.4em 0;background:#fff8e1;padding:.3em .5em}
details details>summary{color:#1565c0;cursor:pointer;margin:.3em 0}
"""


def write_html(
    ledger: Ledger, out: TextIO, outcome: str | None = None, label: str | None = None
) -> None:
    """The whole page; ``label`` names a scratch ledger instead of its path."""
    data = summary(ledger, outcome, label)
    outcomes = data["outcomes"]
    codes = data["error_codes"]
    assert isinstance(outcomes, dict)
    assert isinstance(codes, dict)
    total = int(str(data["total"]))
    ok = sum(n for name, n in outcomes.items() if Outcome(name) in SUCCESS)
    runs = _runs(ledger) if label is None else []
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>cancel-orders report: {escape(str(data['ledger']))}</title>",
        f"<style>{STYLE}</style></head><body>",
        "<h1>cancel-orders report</h1>",
        f'<p id="summary">Ledger <code>{escape(str(data["ledger"]))}</code>: '
        f'<strong id="total">{total}</strong> orders, <strong id="succeeded">{ok}</strong> '
        f"cancelled or already cancelled.{_last_run(data.get('last_run'))}</p>",
        run_header(runs[0] if runs else None),
        '<h2>Outcomes</h2><div id="outcomes">',
        _bars(outcomes),
        "</div>",
        '<h2>Error codes</h2><table id="error-codes"><tr><th>error code</th><th>orders</th></tr>',
        *(f'<tr><td>{escape(c)}</td><td class="n">{n}</td></tr>' for c, n in codes.items()),
        "</table>" + ("" if codes else '<p class="muted">None.</p>'),
        _attention(ledger),
        _timeline(ledger.timeline()),
        runs_table(runs),
        "</body></html>",
    ]
    out.write("\n".join(parts) + "\n")


def _runs(ledger: Ledger) -> list[dict[str, object]]:
    try:
        return ledger.audit().runs()
    except LedgerError:  # a ledger of an earlier version, read where it cannot be upgraded
        return []


def _last_run(last: object) -> str:
    if not isinstance(last, dict):
        return ""
    return (
        f" Last run <code>{escape(str(last['run_id']))}</code> ({escape(str(last['command']))})"
        f" started {escape(str(last['started_at']))}, exit {escape(str(last['exit_code']))}."
    )


def _bars(outcomes: dict[str, int]) -> str:
    """A horizontal bar per outcome, zeros included."""
    width, row, label = 640, 26, 150
    top = max([*outcomes.values(), 1])
    height = row * len(outcomes) + 10
    items = []
    for i, (name, n) in enumerate(outcomes.items()):
        y = 5 + i * row
        bar = (width - label - 80) * n / top
        items.append(
            f'<g class="bar" data-outcome="{name}" data-count="{n}">'
            f'<text x="0" y="{y + 16}">{name}</text>'
            f'<rect x="{label}" y="{y + 3}" width="{bar:.1f}" height="{row - 8}" '
            f'fill="{COLOURS.get(name, "#999")}"/>'
            f'<text x="{label + bar + 6:.1f}" y="{y + 16}">{n}</text></g>'
        )
    return (
        f'<svg role="img" aria-label="orders by outcome" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}">{"".join(items)}</svg>'
    )


def _timeline(points: list[tuple[str, str, int]]) -> str:
    """Orders answered per second and the share that failed, over the ledger's time span."""
    if not points:
        return '<h2>Over time</h2><p id="timeline" class="muted">Nothing answered yet.</p>'
    seconds = sorted({p[0] for p in points})
    start = datetime.fromisoformat(seconds[0])
    span = int((datetime.fromisoformat(seconds[-1]) - start).total_seconds()) + 1
    step = max(1, -(-span // MAX_POINTS))  # seconds per bucket
    buckets = -(-span // step)
    done = [0] * buckets
    failed = [0] * buckets
    for second, outcome, n in points:
        k = int((datetime.fromisoformat(second) - start).total_seconds()) // step
        done[k] += n
        if Outcome(outcome) not in SUCCESS:
            failed[k] += n
    rates = [d / step for d in done]
    errors = [100.0 * f / d if d else 0.0 for f, d in zip(failed, done, strict=True)]
    return (
        f'<h2>Over time</h2><div id="timeline" data-buckets="{buckets}" data-step-s="{step}">'
        f"<p>From {escape(seconds[0])}Z, {span} s, one point per {step} s (times in UTC).</p>"
        + _line("throughput", "orders answered per second", rates, "#1565c0", start, span)
        + _line("error-rate", "share not cancelled (%)", errors, "#c62828", start, span, 100.0)
        + "</div>"
    )


def _line(
    ident: str,
    title: str,
    values: list[float],
    colour: str,
    start: datetime,
    span_s: int,
    top: float = 0.0,
) -> str:
    width, height, pad = 640, 175, 40
    peak = max([*values, top, 1e-9])
    n = max(len(values) - 1, 1)
    points = " ".join(
        f"{pad + (width - pad - 10) * i / n:.1f},{height - 20 - (height - 40) * v / peak:.1f}"
        for i, v in enumerate(values)
    )
    return (
        f'<figure id="{ident}"><figcaption>{escape(title)}, peak {max(values):.1f}</figcaption>'
        f'<svg role="img" aria-label="{escape(title)}" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}">'
        f'<line x1="{pad}" y1="{height - 20}" x2="{width - 10}" y2="{height - 20}" stroke="#999"/>'
        f'<text x="0" y="24">{peak:.0f}</text><text x="0" y="{height - 20}">0</text>'
        f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="{points}"/>'
        f"{clock_axis(start, span_s, width, pad, height - 3)}</svg></figure>"
    )


def _attention(ledger: Ledger) -> str:
    """The orders a person has to look at, grouped by error code."""
    rows = (row for outcome in ATTENTION for row in ledger.rows(outcome))
    return attention_groups(rows, ATTENTION_LIMIT)


# -- the page's parts: the run's header, the list of runs, the time charts in clock time, and
# the orders that need a person grouped by error code with what to do next

GROUP_ROWS = 10  # rows shown of each group; the rest behind "N more"
RETRYABLE = ("retryable_failed", "pending")


@cache
def code_guide() -> dict[str, dict[str, str]]:
    """config/codes.toml: each code's meaning and what to do next."""
    with defaults_file("codes.toml").open("rb") as f:
        data = tomllib.load(f)
    guide: dict[str, dict[str, str]] = dict(data.get("codes", {}))
    guide["*"] = dict(data.get("default", {}))
    guide["retryable"] = dict(data.get("retryable", {}))
    return guide


def run_header(run: dict[str, object] | None) -> str:
    """Who ran the last run, why, on what input, with which limits, and how it ended."""
    if run is None:
        return ""
    details = run.get("details") if isinstance(run.get("details"), dict) else {}
    assert isinstance(details, dict)
    given = details.get("input")
    source = given if isinstance(given, dict) else {}
    what = str(source.get("name", "-"))
    if source.get("sha256"):
        what += f" (sha256 {str(source['sha256'])[:12]}, {source.get('lines')} lines)"
    if source.get("plan"):
        what += f" (plan digest {str(source['plan'])[:12]})"
    if source.get("selection"):
        what += f" (selection {source['selection']})"
    limits = details.get("limits")
    shown = (
        ", ".join(f"{k} {v}" for k, v in limits.items() if v not in (None, 0, ""))
        if isinstance(limits, dict)
        else "-"
    )
    ended = (
        "still running, or stopped hard" if run["exit_code"] is None else f"exit {run['exit_code']}"
    )
    rows = [
        ("run", f"{run['run_id']} ({run['command']}), {ended}"),
        ("who", f"{run.get('operator') or '?'} on {run.get('host') or '?'}"),
        ("why", f"{run.get('reason') or '(no --reason given)'}"),
        ("ticket", str(run.get("ticket") or "-")),
        ("when", f"{run['started_at']} to {run.get('finished_at') or '-'}"),
        ("target", str(details.get("target") or run.get("base_url") or "-")),
        ("input", what),
        ("limits", shown),
        ("command", str(details.get("command_line") or "-")),
    ]
    cells = "".join(f"<tr><th>{k}</th><td>{escape(v)}</td></tr>" for k, v in rows)
    return f'<h2>Last run</h2><table id="run">{cells}</table>'


def runs_table(runs: list[dict[str, object]]) -> str:
    """Every run of the ledger, newest first (when there is more than one)."""
    if len(runs) < 2:
        return ""
    head = (
        "<tr><th>run</th><th>started</th><th>by</th><th>reason</th><th>command</th>"
        "<th>requests</th><th>outcomes</th><th>exit</th></tr>"
    )
    rows = []
    for run in runs:
        outcomes = run.get("outcomes")
        counts = (
            ", ".join(f"{k} {v}" for k, v in outcomes.items()) if isinstance(outcomes, dict) else ""
        )
        cells = [
            run["run_id"], run["started_at"], run.get("operator") or "", run.get("reason") or "",
            run["command"], run.get("requests", ""), counts,
            "-" if run["exit_code"] is None else run["exit_code"],
        ]  # fmt: skip
        rows.append("<tr>" + "".join(f"<td>{escape(str(c))}</td>" for c in cells) + "</tr>")
    return f'<h2>Runs ({len(runs)})</h2><table id="runs">{head}{"".join(rows)}</table>'


def clock_axis(start: datetime, span_s: int, width: int, pad: int, y: int) -> str:
    """Tick labels in clock time (UTC) under a chart spanning ``span_s`` seconds."""
    ticks = 5 if span_s >= 5 else max(span_s, 1)
    labels = []
    for k in range(ticks + 1):
        at = start + timedelta(seconds=span_s * k / ticks)
        x = pad + (width - pad - 10) * k / ticks
        anchor = "start" if k == 0 else "end" if k == ticks else "middle"
        labels.append(
            f'<text class="tick" x="{x:.1f}" y="{y}" text-anchor="{anchor}">'
            f"{at.strftime('%H:%M:%S')}</text>"
        )
    return "".join(labels)


def attention_groups(rows: Iterable[tuple[object, ...]], limit: int) -> str:
    """The orders that need a person, one collapsible group per error code (most orders
    first), each with the code's meaning and what to do next; ``limit`` rows at most."""
    groups: dict[tuple[str, str], list[tuple[object, ...]]] = {}
    counts: dict[tuple[str, str], int] = {}
    shown = 0
    for row in rows:
        outcome, code = str(row[1]), str(row[3] or f"({row[1]})")
        key = ("retryable" if outcome in RETRYABLE else "final", code)
        counts[key] = counts.get(key, 0) + 1
        if shown < limit:
            groups.setdefault(key, []).append(row)
            shown += 1
    total = sum(counts.values())
    if not total:
        return '<h2>Orders that need a person</h2><p id="attention" class="muted">None.</p>'
    parts = [f'<h2>Orders that need a person ({total})</h2><div id="attention">']
    order = sorted(counts, key=lambda k: (k[0] == "retryable", -counts[k], k[1]))
    parts.extend(_group(key, groups.get(key, []), counts[key]) for key in order)
    if shown < total:
        parts.append(
            f'<p class="muted">{shown} of {total} listed: '
            "<code>cancel-orders report --format csv --outcome NAME</code> gives them all.</p>"
        )
    parts.append("</div>")
    return "".join(parts)


def _group(key: tuple[str, str], rows: list[tuple[object, ...]], count: int) -> str:
    kind, code = key
    guide = code_guide()
    entry = guide.get(code, guide["*"])
    meaning = entry.get("meaning", "")
    advice = guide["retryable"]["next"] if kind == "retryable" else entry.get("next", "")
    outcomes = sorted({str(r[1]) for r in rows})
    head = (
        "<tr><th>order</th><th>outcome</th><th>HTTP</th><th>message</th><th>attempts</th>"
        "<th>updated</th></tr>"
    )

    def table(part: list[tuple[object, ...]], suffix: str) -> str:
        body = "".join(
            "<tr>"
            + "".join(
                f"<td>{escape(str(c if c is not None else ''))}</td>"
                for c in (r[0], r[1], r[2], r[4], r[5], r[6])
            )
            + "</tr>"
            for r in part
        )
        return f'<table id="attention-{escape(code)}{suffix}">{head}{body}</table>'

    first, rest = rows[:GROUP_ROWS], rows[GROUP_ROWS:]
    more = (
        f"<details><summary>{len(rest)} more</summary>{table(rest, '-more')}</details>"
        if rest
        else ""
    )
    return (
        f'<details class="group" open data-code="{escape(code)}" data-count="{count}">'
        f"<summary><strong>{escape(code)}</strong>: {count} orders "
        f"({escape(', '.join(outcomes))})</summary>"
        f'<p class="meaning">{escape(meaning)}</p><p class="next"><strong>Next:</strong> '
        f"{escape(advice)}</p>{table(first, '')}{more}</details>"
    )
