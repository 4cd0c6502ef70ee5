"""``baseline``: today's code beside an earlier commit's and the bare loop, in the same rounds.

    BENCH_BASELINE=62cbafe python -m benchmarks baseline --rounds 5

The earlier commit's ``worker`` package is taken from git (``git archive``) into the
benchmark's folder and compiled, and runs from there (``PYTHONPATH``) with today's libraries.
Each round runs the bare loop, the earlier code and today's, in an order that alternates, at
0 ms (``--orders``) and at 50 ms (12,800 orders at most): the throughput at the server and each
process's CPU per order, start-up included; medians of the rounds. It tells whether a figure
measured long ago comes back on today's machine (docs/development.md, "The baselines, measured
again").
"""

from __future__ import annotations

import compileall
import io
import os
import statistics
import subprocess
import tarfile
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from benchmarks.__main__ import Bench, Simulator

DEFAULT_BASELINE = "62cbafe"  # the last commit before the attempt log
SLOW_ORDERS = 12_800  # at 50 ms: ten seconds a run


def earlier_tree(bench: Bench, revision: str) -> Path:
    """The ``worker`` package of ``revision``, extracted and compiled; the folder holding it."""
    checkout = Path(__file__).resolve().parent.parent
    archive = subprocess.run(
        ["git", "-C", str(checkout), "archive", revision, "worker"],
        check=True,
        capture_output=True,
    ).stdout
    tree = bench.work / f"baseline-{revision}"
    tree.mkdir()
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        if hasattr(tarfile, "data_filter"):  # Python 3.11.4 and later
            tar.extractall(tree, filter="data")
        else:
            tar.extractall(tree)  # git's own archive of this repository
    compileall.compile_dir(tree / "worker", quiet=1)
    return tree


def scenario_baseline(bench: Bench, sims: dict[float, Simulator], orders: int) -> None:
    """The bare loop, $BENCH_BASELINE's code and today's at 0 and 50 ms, paired rounds."""
    revision = os.environ.get("BENCH_BASELINE", DEFAULT_BASELINE)
    tree = earlier_tree(bench, revision)
    flags = ("--rate", "1000000", "--concurrency", "64")
    for latency, n in ((0.0, orders), (50.0, min(orders, SLOW_ORDERS))):
        sim = sims[latency]
        rates: dict[str, list[float]] = {"bare": [], revision: [], "today": []}
        cpus: dict[str, list[float]] = {name: [] for name in rates}
        for round_ in range(max(bench.rounds, 3)):
            commands = {
                "bare": bench.bare(sim.root, n, 64, bench.prefix("Y")),
                revision: ["env", f"PYTHONPATH={tree}", *bench.tool(bench.ids(n), *flags)],
                "today": bench.tool(bench.ids(n), *flags),
            }
            names = list(commands) if round_ % 2 == 0 else list(commands)[::-1]
            for name in names:
                m = sim.measure(commands[name])
                if m.deletes != n:
                    raise SystemExit(f"baseline: {name} sent {m.deletes} DELETEs of {n}")
                rates[name].append(m.per_s)
                cpus[name].append(1e6 * m.cpu_s / n)
                print(
                    f"  {latency:.0f} ms round {round_ + 1} {name:8} {m.per_s:7.0f}/s  "
                    f"{cpus[name][-1]:6.1f} µs CPU per order",
                    flush=True,
                )
        rate = {name: statistics.median(values) for name, values in rates.items()}
        cpu = {name: statistics.median(values) for name, values in cpus.items()}
        figure = f"bare loop {cpu['bare']:.0f} µs per order, {rate['bare']:.0f}/s; " + "; ".join(
            f"{name} {cpu[name]:.0f} µs ({cpu[name] / cpu['bare']:.2f}x CPU, "
            f"{rate[name] / rate['bare']:.2f} of the rate)"
            for name in (revision, "today")
        )
        bench.add(
            f"baseline {revision} beside today, {latency:.0f} ms, {n} orders (medians)",
            figure,
            f"today's CPU per order {cpu['today'] / cpu[revision]:.2f}x {revision}'s",
        )
