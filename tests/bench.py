"""Benchmark: the tool against a bare aiohttp loop, both against the same simulator process.

    python -m tests.bench [--orders 20000] [--rounds 3] [--latency-ms 0] [--concurrency 64]

Throughput is read at the server (first to last DELETE arrival), so both clients are measured
the same way; the two alternate and the best round of each counts. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

BARE = r"""
import asyncio, sys, aiohttp
root, prefix, n, c = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
async def main():
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=c)) as s:
        form = {"grant_type": "client_credentials", "client_id": "demo-client",
                "client_secret": "demo-secret"}
        async with s.post(root + "/soget-connect/v1/openid-connect/token", data=form) as r:
            token = (await r.json())["access_token"]
        headers = {"Authorization": "Bearer " + token, "Ocp-Apim-Subscription-Key": "demo-key"}
        sem = asyncio.Semaphore(c)
        async def one(i):
            async with sem:
                url = f"{root}/customer-orders/v1/customer-orders/{prefix}{i:010d}"
                async with s.delete(url, headers=headers) as r:
                    await r.read()
        await asyncio.gather(*(one(i) for i in range(n)))
asyncio.run(main())
"""


def _get(url: str, method: str = "GET") -> dict[str, object]:
    request = urllib.request.Request(url, method=method)
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())  # type: ignore[no-any-return]


def _child_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _measure(root: str, command: list[str], env: dict[str, str]) -> tuple[float, float, int]:
    """(DELETEs per second at the server, client CPU seconds, DELETEs)."""
    _get(root + "/_sim/reset", "POST")
    cpu = _child_cpu()
    subprocess.run(
        command, env=env, check=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    cpu = _child_cpu() - cpu
    stats = _get(root + "/_sim/stats")
    deletes = int(stats["deletes"])  # type: ignore[call-overload]
    span = float(stats["span_s"]) or 1e-9  # type: ignore[arg-type]
    return deletes / span, cpu, deletes


def main() -> None:
    """Run the rounds and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--orders", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--latency-ms", type=float, default=0)
    parser.add_argument("--concurrency", type=int, default=64)
    args = parser.parse_args()
    sim = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "worker",
            "simulate",
            "--port",
            "0",
            "--latency-ms",
            str(args.latency_ms),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert sim.stdout is not None
        root = sim.stdout.readline().split("listening on ")[1].split(" ")[0]
        work = Path(tempfile.mkdtemp(prefix="cancel-orders-bench-"))
        env = {
            **os.environ,
            "MOUVONE_BASE_URL": root + "/customer-orders/v1",
            "MOUVONE_TOKEN_URL": root + "/soget-connect/v1/openid-connect/token",
            "MOUVONE_CLIENT_ID": "demo-client",
            "MOUVONE_CLIENT_SECRET": "demo-secret",
            "MOUVONE_API_KEY": "demo-key",
            "MOUVONE_LOG_FORMAT": "json",
        }
        best: dict[str, tuple[float, float, int]] = {}
        for round_ in range(args.rounds):
            prefix = f"B{chr(65 + round_ % 26)}"
            ids = work / f"{prefix}.csv"
            ids.write_text(
                "orderId\n" + "".join(f"{prefix}T{i:010d}\n" for i in range(args.orders))
            )
            runs = {
                "bare aiohttp": [
                    sys.executable,
                    "-c",
                    BARE,
                    root,
                    f"{prefix}B",
                    str(args.orders),
                    str(args.concurrency),
                ],
                "cancel-orders": [
                    sys.executable,
                    "-m",
                    "worker",
                    "run",
                    str(ids),
                    "--yes",
                    "--rate",
                    "1000000",
                    "--concurrency",
                    str(args.concurrency),
                    "--ledger",
                    str(work / f"{prefix}.sqlite"),
                ],
            }
            for name, command in runs.items():
                result = _measure(root, command, env)
                if name not in best or result[0] > best[name][0]:
                    best[name] = result
                print(
                    f"round {round_ + 1} {name:14} {result[0]:9.0f}/s  cpu {result[1]:.2f}s"
                    f"  deletes {result[2]}",
                    flush=True,
                )
        bare, tool = best["bare aiohttp"], best["cancel-orders"]
        print(
            f"\norders {args.orders}, latency {args.latency_ms} ms, "
            f"{args.concurrency} in flight, best of {args.rounds}"
        )
        print(f"throughput ratio (tool / bare): {tool[0] / bare[0]:.2f}")
        print(f"CPU per order ratio (tool / bare): {(tool[1] / tool[2]) / (bare[1] / bare[2]):.2f}")
    finally:
        sim.terminate()
        sim.wait(timeout=10)


if __name__ == "__main__":
    main()
