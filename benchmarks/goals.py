"""The cost goals, each a median and a range of paired rounds: in every round the bare loop and
the tool run back to back against the same simulator (their order alternating), so that each
round's ratio compares two runs of the same minute on this noisy machine.

| goal | measured each round |
|---|---|
| throughput ratio to the bare loop, 0 ms, 64 in flight | >= 0.90 |
| CPU per order against the bare loop, 50 ms, 64 in flight | <= 1.10x |
| PostgreSQL ledger at 0 ms, ratio to the SQLite ledger's | >= 0.90 |
| ledger bytes per order, with its one attempt (the file as a run leaves it) | <= 200 |
| peak RSS of a 100,000-order run; its growth from a tenth of the run | <= 70 MiB, flat |
| 30% of orders retried twice at --rate 100: share of the time the rate allows | >= 0.98 |
"""

from __future__ import annotations

import contextlib
import os
import statistics
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from benchmarks.__main__ import Bench, Simulator

RSS_ORDERS = 100_000
SAMPLE_S = 0.1  # how often the run's resident size is read


def sampled_rss(sim: Simulator, command: list[str]) -> tuple[float, float]:
    """(resident MiB a tenth of the way through the run, peak resident MiB) of one run of the
    tool, read from /proc every SAMPLE_S: growth within one process (two processes' peaks
    differ by more than the growth to be seen)."""
    sim.call("/_sim/reset", "POST")
    proc = subprocess.Popen(
        command, env=sim.env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    samples: list[float] = []
    status = Path(f"/proc/{proc.pid}/status")
    while True:
        pid, _, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        with contextlib.suppress(OSError, IndexError, ValueError):
            samples.append(int(status.read_text().split("VmRSS:")[1].split()[0]) / 1024)
        time.sleep(SAMPLE_S)
    proc.returncode = 0  # reaped here
    early = samples[len(samples) // 10] if samples else 0.0
    return early, usage.ru_maxrss / 1024


class Figures:
    """Each goal's figure, round by round."""

    def __init__(self) -> None:
        self.rounds: dict[str, list[float]] = {}

    def add(self, goal: str, value: float) -> None:
        self.rounds.setdefault(goal, []).append(value)

    def line(self, goal: str, unit: str, met: Callable[[float], bool]) -> tuple[str, bool]:
        values = self.rounds[goal]
        median = statistics.median(values)
        figure = f"median {median:{unit}} (range {min(values):{unit}} to {max(values):{unit}})"
        return figure, met(median)


def scenario_goals(bench: Bench, sims: dict[float, Simulator], orders: int) -> None:
    """Every goal, each round measuring each of them once."""
    from benchmarks.__main__ import _pg_schema, drop_schemas, measure_retries  # noqa: PLC0415

    rounds = max(bench.rounds, 5)
    figures = Figures()
    created: list[str] = []
    fast, slow = sims[0.0], sims[50.0]
    n_slow = min(orders, 6400)
    try:
        for round_ in range(rounds):
            flip = round_ % 2 == 1
            # 0 ms: the bare loop, the tool on SQLite, the tool on PostgreSQL
            ids = bench.ids(orders)
            lite_cmd = bench.tool(ids, "--rate", "1000000", "--concurrency", "64")
            pg_cmd = bench.tool(
                bench.ids(orders),
                "--rate",
                "1000000",
                "--concurrency",
                "64",
                ledger=_pg_schema(created),
            )
            bare_cmd = bench.bare(fast.root, orders, 64, bench.prefix("Y"))
            order = [("bare", bare_cmd), ("sqlite", lite_cmd), ("postgresql", pg_cmd)]
            measured = {name: fast.measure(cmd) for name, cmd in (order[::-1] if flip else order)}
            figures.add("throughput", measured["sqlite"].per_s / measured["bare"].per_s)
            figures.add("postgresql", measured["postgresql"].per_s / measured["sqlite"].per_s)
            figures.add("bytes", ids.with_suffix(".sqlite").stat().st_size / orders)
            # 50 ms: CPU per order
            slow_ids = bench.ids(n_slow)
            pair = [
                ("bare", bench.bare(slow.root, n_slow, 64, bench.prefix("Y"))),
                ("tool", bench.tool(slow_ids, "--rate", "1000000", "--concurrency", "64")),
            ]
            cpu = {name: slow.measure(cmd) for name, cmd in (pair[::-1] if flip else pair)}
            figures.add("cpu", cpu["tool"].cpu_per_order_ms / cpu["bare"].cpu_per_order_ms)
            # the resident size within one large run: a tenth of the way, and its peak
            early, peak = sampled_rss(fast, bench.tool(bench.ids(RSS_ORDERS), "--rate", "1000000"))
            figures.add("rss", peak)
            figures.add("rss growth", peak / max(early, 1e-9) - 1)
            # retries: the share of the time the rate allows that the run took
            _, span, needed = measure_retries(bench, sims)
            figures.add("retries", needed / span)
            print(
                f"  round {round_ + 1}: "
                + ", ".join(f"{k} {v[-1]:.3g}" for k, v in figures.rounds.items()),
                flush=True,
            )
    finally:
        drop_schemas(created)
    rows = [
        ("throughput ratio, 0 ms", "throughput", ".2f", lambda m: m >= 0.90, ">= 0.90"),
        ("CPU per order vs bare, 50 ms", "cpu", ".2f", lambda m: m <= 1.10, "<= 1.10x"),
        ("PostgreSQL / SQLite, 0 ms", "postgresql", ".2f", lambda m: m >= 0.90, ">= 0.90"),
        ("ledger bytes per order", "bytes", ".0f", lambda m: m <= 200, "<= 200"),
        (f"peak RSS, {RSS_ORDERS:,} orders (MiB)", "rss", ".1f", lambda m: m <= 70, "<= 70 MiB"),
        ("RSS growth, a tenth of the run to its peak", "rss growth", "+.1%",
         lambda m: m <= 0.10, "flat (<= +10%)"),
        ("retries: share of the rate's time", "retries", ".3f", lambda m: m >= 0.98, ">= 0.98"),
    ]  # fmt: skip
    for label, goal, unit, met, target in rows:
        figure, ok = figures.line(goal, unit, met)
        bench.add(
            f"goal: {label}",
            f"{figure}, {rounds} rounds",
            f"{target}: {'met' if ok else 'not met'}",
        )
    print(f"  ({os.cpu_count()} CPUs; each round: {orders:,} orders at 0 ms, {n_slow:,} at 50 ms)")
