"""Parts of the HTML report: the run's header, the list of runs, the time charts in clock
time, and the orders that need a person grouped by error code with what to do next."""

from __future__ import annotations

import tomllib
from collections.abc import Iterable
from datetime import datetime, timedelta
from functools import cache
from html import escape

from worker.domain.defaults import defaults_file

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
