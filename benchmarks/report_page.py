"""The HTML report of a realistic ledger, and its screenshot for the docs.

    python -m benchmarks.report_page [--out docs]

Three runs against the simulator (a first run of 3,000 orders by one operator, a `retry` by
another, a last run of a late file): orders refused for business rules (R0008, R0009, a
container, a child order), not found, invalid lines and failures left for a retry. Writes
``report-example.html`` and, with Debian's chromium, ``report-example.png`` into ``--out``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from worker.simulator import start

MIX = {  # prefix -> orders, for the first run's 3,000
    "CDE": 2_700,
    "SUB": 120,
    "CTR": 35,
    "NMO": 20,
    "DLV": 12,
    "NFD": 45,
    "TMP": 40,  # 503 on their first attempts (half of them on every one)
    "NST": 8,
}


def _ids() -> list[str]:
    rng = random.Random(7)
    found = [f"{p}{rng.randrange(10**10):010d}" for p, n in MIX.items() for _ in range(n)]
    # a TMP order answers 503 as often as its last digit says (0: always)
    found = [f"TMP{k:09d}{2 * (k % 2)}" if i.startswith("TMP") else i for k, i in enumerate(found)]
    found += ["CDE12345", "cde0000000001", "N/A", "CDE00000000019", "ORDER-4471"] * 4
    rng.shuffle(found)
    return found


async def _build(folder: Path) -> Path:
    sim = await start(port=0)
    ledger = folder / "cancellations.sqlite"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MOUVONE_")}
    c = sim.sim.config
    env.update(
        MOUVONE_BASE_URL=sim.base_url, MOUVONE_TOKEN_URL=sim.token_url,
        MOUVONE_CLIENT_ID=c.client_id, MOUVONE_CLIENT_SECRET=c.client_secret,
        MOUVONE_API_KEY=c.api_key, MOUVONE_LEDGER=str(ledger), MOUVONE_RATE="400",
        MOUVONE_LOG_LEVEL="warning", MOUVONE_BACKOFF_BASE="0.05",
    )  # fmt: skip
    first = folder / "terminal-closure-orders.csv"
    first.write_text("orderId\n" + "\n".join(_ids()) + "\n", encoding="utf-8")
    late = folder / "late-additions.csv"
    late.write_text("orderId\n" + "\n".join(f"CDE9{k:09d}" for k in range(150)) + "\n")
    steps = [
        ["run", str(first), "--max-attempts", "1", "--operator", "m.durand",
         "--reason", "Terminal TN4 closure: cancel its open orders", "--ticket", "CHG-2291"],
        ["retry", "--max-attempts", "3", "--operator", "s.leroy",
         "--reason", "second pass after the 503s",
         "--ticket", "CHG-2291"],
        ["run", str(late), "--operator", "m.durand", "--reason", "orders found after the closure",
         "--ticket", "CHG-2291"],
    ]  # fmt: skip
    try:
        for step in steps:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "worker", *step, "--yes", env=env,
                stdout=asyncio.subprocess.DEVNULL,
            )  # fmt: skip
            await proc.wait()
    finally:
        await sim.close()
    return ledger


def main() -> None:
    """Build the ledger, write the page, take its screenshot."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("docs"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        ledger = asyncio.run(_build(Path(tmp)))
        page = args.out / "report-example.html"
        subprocess.run(
            [sys.executable, "-m", "worker", "report", "--ledger", str(ledger), "--format",
             "html", "--output", str(page)],
            check=True,
        )  # fmt: skip
    print(f"wrote {page}")
    browser = shutil.which("chromium")
    if browser is None:
        print("no chromium: no screenshot")
        return
    shot = args.out / "report-example.png"
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run(
            [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
             "--disable-background-networking", "--no-first-run", f"--user-data-dir={profile}",
             "--window-size=1200,2400", f"--screenshot={shot.resolve()}", page.resolve().as_uri()],
            check=True, capture_output=True,
        )  # fmt: skip
    print(f"wrote {shot}")


if __name__ == "__main__":
    main()
