"""The unattended night, rehearsed: a reviewed plan of 5,000 orders applied with the runbook's
flags, against a gateway with a rate limit, orders that answer 429 and 503 before they cancel,
orders that always answer 500, refusals, orders already cancelled, orders not found and a
15-second outage; interrupted twice (SIGINT) and resumed each time with the same command, and
run again with that command whenever it stops with exit 4 (a canary that was not clean), until
it ends with 0 or 1.

It prints what a morning review would check: every order's outcome against the one its kind
must end with, the runs and their exit statuses and reasons, DELETEs sent after an order's final
answer, the busiest second at the gateway, and how often the always-failing orders were tried.
"""

from __future__ import annotations

import json
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from benchmarks.__main__ import Bench, Simulator

GATEWAY_LIMIT = 150
REASON = "T-1234 closed terminal"
# prefix -> (how many, the outcome the order must end with). The simulator answers by prefix;
# TMP...2 answers 503 twice, THR...1 answers 429 once, ERR answers 500 every time.
KINDS: dict[str, tuple[int, str]] = {
    "ZNA": (4555, "cancelled"),
    "TMP": (100, "cancelled"),
    "THR": (50, "cancelled"),
    "ALR": (150, "already_cancelled"),
    "SUB": (50, "skipped"),
    "NMO": (20, "rejected"),
    "DLV": (10, "rejected"),
    "NFD": (10, "not_found"),
    "ERR": (5, "retryable_failed"),
}
INTERRUPT_AT = (1200, 3400)  # DELETEs seen by the gateway when a run gets SIGINT
OUTAGE_AT = 2300  # DELETEs seen when the API goes down for 15 s


def _ids(work: Path) -> Path:
    last = {"TMP": "2", "THR": "1"}
    ids = [
        f"{prefix}{i:09d}{last.get(prefix, '0')}"
        for prefix, (count, _) in KINDS.items()
        for i in range(count)
    ]
    random.Random(7).shuffle(ids)
    path = work / "night.csv"
    path.write_text("orderId\n" + "".join(f"{i}\n" for i in ids))
    return path


class _Watch:
    """Polls the gateway's DELETE count: SIGINTs the run at each INTERRUPT_AT, starts the outage."""

    def __init__(self, sim: Simulator) -> None:
        self.sim = sim
        self.proc: subprocess.Popen[bytes] | None = None
        self.todo = list(INTERRUPT_AT)
        self.outage_started = False
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        while not self.done.wait(0.2):
            deletes = int(str(self.sim.call("/_sim/stats")["deletes"]))
            if not self.outage_started and deletes >= OUTAGE_AT:
                self.outage_started = True
                self.sim.call("/_sim/outage?seconds=15", "POST")
            proc = self.proc
            if self.todo and deletes >= self.todo[0] and proc and proc.poll() is None:
                self.todo.pop(0)
                proc.send_signal(signal.SIGINT)


def scenario_night(bench: Bench, _sims: dict[float, Simulator], _orders: int) -> None:
    """5,000 orders, the runbook's flags, two interruptions, resumed with the same command."""
    from benchmarks.__main__ import Simulator  # noqa: PLC0415 - the suite's entry module

    sim = Simulator(20.0, "--rate-limit", str(GATEWAY_LIMIT), "--retry-after", "1")
    try:
        _night(bench, sim)
    finally:
        sim.close()


def _night(bench: Bench, sim: Simulator) -> None:
    work = bench.work / "night"
    work.mkdir()
    ids, ledger, plan = _ids(work), work / "night.sqlite", work / "plan.json"
    tool = [sys.executable, "-m", "worker"]
    common = ["--ledger", str(ledger), "--rate", "200", "--concurrency", "16"]
    started = time.perf_counter()
    subprocess.run(
        [*tool, "plan", str(ids), "--output", str(plan), "--check", "--reason", REASON, *common],
        env=sim.env(),
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    planned = time.perf_counter() - started
    apply = [*tool, "apply", str(plan), "--canary", "20", "--require-status", "Draft,Valid"]
    apply += ["--max-orders", "5000", "--max-failure-rate", "5", "--yes", *common]
    sim.call("/_sim/reset", "POST")
    watch = _Watch(sim)
    statuses: list[int] = []
    while len(statuses) < 30 and (not statuses or statuses[-1] in (4, 130)):
        with (work / f"run{len(statuses) + 1}.log").open("wb") as log:
            watch.proc = subprocess.Popen(apply, env=sim.env(), stdout=log, stderr=log)
            statuses.append(watch.proc.wait())
    watch.done.set()
    elapsed = time.perf_counter() - started
    stats = sim.call("/_sim/stats")
    _review(bench, ledger, stats, statuses, planned, elapsed)


def _review(
    bench: Bench,
    ledger: Path,
    stats: dict[str, object],
    statuses: list[int],
    planned: float,
    elapsed: float,
) -> None:
    with sqlite3.connect(ledger) as db:
        outcomes = dict(db.execute("SELECT order_id, outcome FROM orders").fetchall())
        reasons = [
            r for (r,) in db.execute("SELECT reason FROM runs WHERE command LIKE '% apply %'")
        ]
    wrong = Counter(
        f"{order_id[:3]}:{outcome}"
        for order_id, outcome in outcomes.items()
        if outcome != KINDS[order_id[:3]][1]
    )
    missing = sum(count for count, _ in KINDS.values()) - len(outcomes)
    per_order = dict(stats["per_order"])  # type: ignore[call-overload]
    always_failing = sorted(int(n) for order, n in per_order.items() if order.startswith("ERR"))
    print(f"  runs: {len(statuses)}, exit statuses {statuses}", flush=True)
    print(f"  outcomes: {dict(Counter(outcomes.values()))}", flush=True)
    print(
        f"  wrong: {dict(wrong) or 'none'}, missing: {missing}, "
        f"DELETEs after a final answer: {stats['resent_final']}, "
        f"runs without the plan's reason: {sum(r != REASON for r in reasons)}",
        flush=True,
    )
    print(
        f"  gateway: {stats['deletes']} DELETEs, statuses {json.dumps(stats['statuses'])}, "
        f"busiest second {stats['max_per_second']} (limit {GATEWAY_LIMIT}); "
        f"DELETEs per always-500 order {always_failing}",
        flush=True,
    )
    clean = (
        not wrong
        and not missing
        and not stats["resent_final"]
        and statuses[-1] in (0, 1)
        and 3 not in statuses
        and all(r == REASON for r in reasons)
    )
    bench.add(
        "night",
        f"5,000 orders, {len(statuses)} runs {statuses}, plan --check {planned:.0f} s, "
        f"{elapsed:.0f} s in all",
        "every outcome right" if clean else "WRONG: see above",
    )
