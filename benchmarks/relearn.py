"""The limiter after 429s that were not its own doing: a resume right after a kill -9 (the dead
run's last second still in the gateway's window), and a neighbour taking half of the limit for
10 s and leaving. Rates are read at the client's send times in the ledger's attempt log."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from datetime import datetime
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pathlib import Path

    from benchmarks.__main__ import Bench, Simulator

NEIGHBOUR = r"""
import asyncio, sys, time, aiohttp
root, per_s, seconds = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
async def main():
    async with aiohttp.ClientSession() as s:
        form = {"grant_type": "client_credentials", "client_id": "demo-client",
                "client_secret": "demo-secret"}
        async with s.post(root + "/soget-connect/v1/openid-connect/token", data=form) as r:
            token = (await r.json())["access_token"]
        headers = {"Authorization": "Bearer " + token, "Ocp-Apim-Subscription-Key": "demo-key"}
        async def one(i):
            url = f"{root}/customer-orders/v1/customer-orders/YNB{i:010d}"
            async with s.delete(url, headers=headers) as r:
                await r.read()
        start, sent, tasks = time.monotonic(), 0, []
        while time.monotonic() - start < seconds:
            tasks.append(asyncio.create_task(one(sent)))
            sent += 1
            await asyncio.sleep(max(0.0, start + sent / per_s - time.monotonic()))
        await asyncio.gather(*tasks)
asyncio.run(main())
"""


def _per_second(ledger: Path) -> tuple[float, dict[int, int], int, int]:
    """(the first send's time, second since it -> requests answered other than 429, 429s,
    requests)."""
    with sqlite3.connect(ledger) as db:
        rows = db.execute("SELECT sent_at, http_status FROM attempts").fetchall()
    times = [(datetime.fromisoformat(t).timestamp(), s) for t, s in rows]
    first = min(t for t, _ in times)
    taken = Counter(int(t - first) for t, s in times if s != 429)
    refused = sum(1 for _, s in times if s == 429)
    return first, dict(taken), refused, len(times)


def _started(
    bench: Bench, sim: Simulator, n: int, rate: int, *, until_deletes: int
) -> tuple[Path, list[str], subprocess.Popen[bytes]]:
    """A run of ``n`` fresh orders at ``rate`` started, once the gateway saw ``until_deletes``
    DELETEs: its ledger, its command line and its process."""
    ids = bench.ids(n)
    ledger = ids.with_suffix(".sqlite")
    command = bench.tool(ids, "--rate", str(rate), "--concurrency", "16", ledger=ledger)
    sim.call("/_sim/reset", "POST")
    proc = subprocess.Popen(
        command, env=sim.env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    while int(str(sim.call("/_sim/stats")["deletes"])) < until_deletes:
        time.sleep(0.05)
    return ledger, command, proc


def _resume_after_kill(bench: Bench, sim: Simulator) -> None:
    ledger, command, first = _started(bench, sim, 12000, 400, until_deletes=3000)
    first.send_signal(signal.SIGKILL)
    first.wait()
    killed_at = time.time()
    second = subprocess.run(
        command, env=sim.env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False
    )
    start, taken, refused, requests = _per_second(ledger)
    series = [taken.get(s, 0) for s in range(int(killed_at - start), max(taken))]
    share = sum(series[1:]) / max(len(series) - 1, 1) / 200  # from the first full second on
    print(f"  per second from the kill: {series}", flush=True)
    bench.add(
        "relearn: resume after kill -9, 200/s gateway, --rate 400",
        f"{share:.2f} of the limit over the resume (exit {second.returncode}); "
        f"429s {100 * refused / requests:.1f}% of {requests} requests in both runs",
        "met" if share >= 0.9 else "not met",
    )


def _neighbour(bench: Bench, sim: Simulator) -> None:
    ledger, _, run = _started(bench, sim, 4500, 100, until_deletes=1000)  # 10 s in
    subprocess.run([sys.executable, "-c", NEIGHBOUR, sim.root, "50", "10"], check=True)
    gone_at = time.time()
    run.wait()
    start, taken, refused, requests = _per_second(ledger)
    seconds = [taken.get(s, 0) for s in range(max(taken))]
    left = int(gone_at - start) + 1
    back = next((s for s in range(left, len(seconds)) if seconds[s] >= 90), None)
    print(f"  per second (the neighbour left in second {left - 1}): {seconds}", flush=True)
    bench.add(
        "relearn: a neighbour takes 50 of a 100/s limit for 10 s",
        f"back at 0.9 of the limit {back - left if back else 'never'} s after it left; "
        f"429s {100 * refused / requests:.1f}% of {requests} requests",
        "met" if back is not None and back - left <= 10 else "not met",
    )


def scenario_relearn(bench: Bench, _sims: dict[float, Simulator], _orders: int) -> None:
    """The two neighbours of issue-sized nights: a killed run's last second, another client."""
    from benchmarks.__main__ import Simulator  # noqa: PLC0415 - the suite's entry module

    sim = Simulator(20.0, "--rate-limit", "200", "--retry-after", "1")
    try:
        _resume_after_kill(bench, sim)
    finally:
        sim.close()
    sim = Simulator(20.0, "--rate-limit", "100", "--retry-after", "1")
    try:
        _neighbour(bench, sim)
    finally:
        sim.close()
