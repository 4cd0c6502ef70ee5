"""The cost goals, each a median and a range of paired rounds: in every round the bare loop and
the tool run back to back against the same simulator (their order alternating), so that each
round's ratio compares two runs of the same minute on this noisy machine.

| goal | measured each round |
|---|---|
| throughput ratio to the bare loop, 0 ms, 64 in flight | >= 0.90 |
| CPU per order against the bare loop, 50 ms, 64 in flight | <= 1.10x |
| PostgreSQL ledger at 0 ms, ratio to the SQLite ledger's | >= 0.90 |
| ledger bytes per order, with its one attempt (the file as a run leaves it) | <= 200 |
| peak RSS of a 10,000- and of a 100,000-order run | <= 70 MiB, flat |
| 30% of orders retried twice at --rate 100: share of the time the rate allows | >= 0.98 |
"""

from __future__ import annotations

import os
import statistics
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from benchmarks.__main__ import Bench, Simulator

RSS_ORDERS = (10_000, 100_000)


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
            # peak RSS of a small and a large run
            for n in RSS_ORDERS:
                run = fast.measure(bench.tool(bench.ids(n), "--rate", "1000000"))
                figures.add(f"rss {n}", run.rss_mib)
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
    small, large = (figures.rounds[f"rss {n}"] for n in RSS_ORDERS)
    growth = [b / a - 1 for a, b in zip(small, large, strict=True)]
    figures.rounds["rss growth"] = growth
    rows = [
        ("throughput ratio, 0 ms", "throughput", ".2f", lambda m: m >= 0.90, ">= 0.90"),
        ("CPU per order vs bare, 50 ms", "cpu", ".2f", lambda m: m <= 1.10, "<= 1.10x"),
        ("PostgreSQL / SQLite, 0 ms", "postgresql", ".2f", lambda m: m >= 0.90, ">= 0.90"),
        ("ledger bytes per order", "bytes", ".0f", lambda m: m <= 200, "<= 200"),
        (f"peak RSS, {RSS_ORDERS[1]:,} orders (MiB)", f"rss {RSS_ORDERS[1]}", ".1f",
         lambda m: m <= 70, "<= 70 MiB"),
        (f"peak RSS growth, {RSS_ORDERS[0]:,} to {RSS_ORDERS[1]:,}", "rss growth", "+.1%",
         lambda m: m <= 0.10, "flat (<= +10%)"),
        ("retries: share of the rate's time", "retries", ".2f", lambda m: m >= 0.98, ">= 0.98"),
    ]  # fmt: skip
    for label, goal, unit, met, target in rows:
        figure, ok = figures.line(goal, unit, met)
        bench.add(
            f"goal: {label}",
            f"{figure}, {rounds} rounds",
            f"{target}: {'met' if ok else 'not met'}",
        )
    print(f"  ({os.cpu_count()} CPUs; each round: {orders:,} orders at 0 ms, {n_slow:,} at 50 ms)")
