"""Several hosts on one PostgreSQL ledger, given the same input: 1, 2 and 4 runs (each its own
process, as on separate hosts) against a gateway limit of 200/s with `--rate` split between
them (the documented way: `--rate` is each run's own), and with no gateway limit, to see how
throughput grows with hosts and where the machine or PostgreSQL becomes the bound.

Figures are read at the gateway (the simulator): DELETEs per second from first to last, the
busiest sliding second, and the share of requests answered 429."""

from __future__ import annotations

import os
import subprocess
import time
from datetime import datetime
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from benchmarks.__main__ import Bench, Simulator

GATEWAY_LIMIT = 200
HOSTS = (1, 2, 4)


def _together(bench: Bench, sim: Simulator, hosts: int, n: int, flags: list[str]) -> str:
    """``hosts`` runs of one input on one fresh ledger at once; the gateway's figures."""
    from benchmarks.__main__ import _pg_schema  # noqa: PLC0415 - the suite's entry module

    created: list[str] = []
    ledger = _pg_schema(created)
    ids = bench.ids(n)
    sim.call("/_sim/reset", "POST")
    started = time.perf_counter()
    procs = [
        subprocess.Popen(
            bench.tool(ids, *flags, ledger=ledger),
            env=sim.env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for _ in range(hosts)
    ]
    codes = [proc.wait() for proc in procs]
    wall = time.perf_counter() - started
    stats = sim.call("/_sim/stats")
    steady = _steady_rate(ledger)
    _drop(created)
    deletes = int(str(stats["deletes"]))
    per_s = deletes / (float(str(stats["span_s"])) or 1e-9)
    statuses = {str(k): int(v) for k, v in dict(stats["statuses"]).items()}  # type: ignore[call-overload]
    refused = statuses.get("429", 0) / max(sum(statuses.values()), 1)
    line = (
        f"{hosts} run(s): {per_s:,.0f} DELETEs/s ({steady:,.0f}/s steady), "
        f"busiest second {stats['max_per_second']}, 429s {100 * refused:.1f}%, "
        f"{deletes} DELETEs for {n} orders "
        f"({int(str(stats['resent_final']))} after a final answer), {wall:.1f} s, exits {codes}"
    )
    print(f"  {line}", flush=True)
    return (
        f"{per_s:,.0f}/s first to last, {steady:,.0f}/s steady ({steady / GATEWAY_LIMIT:.2f} of "
        f"the limit), busiest second {stats['max_per_second']}, 429s {100 * refused:.1f}%"
    )


def _steady_rate(ledger: str) -> float:
    """DELETEs per second at the clients' send times, between the 5th and the 95th percentile
    of them: the rate the runs kept once all had started and before the last ones' tails."""
    import psycopg  # noqa: PLC0415

    with psycopg.connect(ledger, autocommit=True) as db:
        rows = db.execute("SELECT sent_at FROM attempts WHERE method = 'DELETE'").fetchall()
    times = sorted(
        datetime.fromisoformat(str(t).replace("Z", "+00:00")).timestamp() for (t,) in rows
    )
    if len(times) < 20:
        return 0.0
    first, last = int(len(times) * 0.05), int(len(times) * 0.95)
    return (last - first) / max(times[last] - times[first], 1e-9)


def _drop(created: list[str]) -> None:
    import psycopg  # noqa: PLC0415

    from benchmarks.__main__ import PG_URL  # noqa: PLC0415

    with psycopg.connect(PG_URL, autocommit=True) as admin:
        for name in created:
            admin.execute(f"DROP SCHEMA IF EXISTS {name} CASCADE")


def scenario_scaleout(bench: Bench, sims: dict[float, Simulator], _orders: int) -> None:
    """1, 2 and 4 runs on one PostgreSQL ledger: under a 200/s gateway limit, then unlimited."""
    from benchmarks.__main__ import Simulator  # noqa: PLC0415

    limited = Simulator(20.0, "--rate-limit", str(GATEWAY_LIMIT), "--retry-after", "1")
    try:
        for hosts in HOSTS:
            rate = f"{GATEWAY_LIMIT / hosts:g}"
            figure = _together(bench, limited, hosts, 6000, ["--rate", rate, "--concurrency", "16"])
            bench.add(
                f"scale-out, {hosts} run(s) at --rate {rate}, 200/s gateway", figure, "stated"
            )
    finally:
        limited.close()
    for hosts in HOSTS:
        flags = ["--rate", "1000000", "--concurrency", str(64 // hosts)]
        figure = _together(bench, sims[0.0], hosts, 30000, flags).split(" first")[0]
        bench.add(f"scale-out, {hosts} run(s), no limit, 0 ms", figure, f"{os.cpu_count()} CPUs")


def scenario_chaos(bench: Bench, _sims: dict[float, Simulator], _orders: int) -> None:
    """The suite's chaos test of several hosts (tests/test_chaos.py), ``--rounds`` times in a
    row: it passes or it does not, and how long each round took."""
    import sys  # noqa: PLC0415

    passed, times = 0, []
    for round_ in range(bench.rounds):
        started = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--no-cov", "-n", "0",
             "-q", "tests/test_chaos.py"],
            check=False, capture_output=True, text=True,
        )  # fmt: skip
        times.append(time.perf_counter() - started)
        passed += done.returncode == 0
        last = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else done.stderr[-300:]
        print(f"  round {round_ + 1}: {last}", flush=True)
    bench.add(
        "chaos: runs and a group on one ledger, kills, freezes, cuts",
        f"passed {passed} of {bench.rounds} in a row, {min(times):.0f} to {max(times):.0f} s each",
        "met" if passed == bench.rounds else "NOT MET",
    )
