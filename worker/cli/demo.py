"""`cancel-orders simulate` and `cancel-orders demo`: the look-alike on its own, or the whole
pipeline against it with a sample batch and a temporary ledger."""

from __future__ import annotations

import argparse
import asyncio
import shutil
import signal
import sys
import tempfile
from importlib import resources
from pathlib import Path

from worker.domain.models import RunOptions
from worker.ledger import Ledger, ledger_at
from worker.reports.report import render_run, write_table
from worker.runs.runner import Runner
from worker.runtime import loop as event_loop
from worker.runtime.logs import configure
from worker.settings import load_settings
from worker.simulator import start
from worker.simulator.config import SIMULATE_FLAGS, SimConfig
from worker.sources import IdValidator
from worker.sources.csv_file import CsvSource


def simulate(args: argparse.Namespace) -> int:
    """Serve until SIGINT or SIGTERM."""
    config = SimConfig(**{field: getattr(args, field) for field, _, _ in SIMULATE_FLAGS.values()})
    return event_loop.run(_serve(config, args.host, args.port))


async def _serve(config: SimConfig, host: str, port: int) -> int:
    running = await start(config, host, port)
    print(
        f"MouvONE simulator listening on {running.root} (stats: {running.root}/_sim/stats)\n"
        f"  export MOUVONE_BASE_URL={running.base_url}\n"
        f"  export MOUVONE_TOKEN_URL={running.token_url}\n"
        f"  export MOUVONE_CLIENT_ID={config.client_id} "
        f"MOUVONE_CLIENT_SECRET={config.client_secret} MOUVONE_API_KEY={config.api_key}",
        flush=True,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    await running.close()
    return 0


def demo(args: argparse.Namespace) -> int:
    """Run the sample batch twice (the second run resumes: nothing is sent again), then report.
    With --keep DIR the demo works in DIR, so that the next steps it prints work afterwards."""
    if args.keep is not None:
        args.keep.mkdir(parents=True, exist_ok=True)
        code = event_loop.run(_demo(args.keep))
        print(
            f"\nDemo files kept in {args.keep}: the next steps above work on its ledger "
            f"(the simulator is gone: `cancel-orders report --ledger "
            f"{args.keep / 'cancellations.sqlite'}`)."
        )
        return code
    workdir = Path(tempfile.mkdtemp(prefix="cancel-orders-demo-"))
    try:
        code = event_loop.run(_demo(workdir))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(
        "\nThe demo's ledger was a temporary file, deleted now: `cancel-orders demo --keep DIR` "
        "keeps it for the next steps above.\nThe real thing, step by step: the README's "
        '"A one-off bulk run" (plan, review, apply with the guardrails).'
    )
    return code


async def _demo(workdir: Path) -> int:
    config = SimConfig(latency_ms=20, stall_s=5)
    running = await start(config)
    try:
        batch = workdir / "orders.csv"
        batch.write_bytes(resources.files("worker").joinpath("sample_orders.csv").read_bytes())
        settings = load_settings(
            {
                "base_url": running.base_url,
                "token_url": running.token_url,
                "client_id": config.client_id,
                "client_secret": config.client_secret,
                "api_key": config.api_key,
                "ledger": workdir / "cancellations.sqlite",
                "rate": 40,
                "concurrency": 8,
                "max_attempts": 3,
                "timeout": 2,
                "backoff_base": 0.1,
                "backoff_cap": 1.0,
                "log_level": "warning",
            },
            env_file=None,
            environment=False,
        )
        configure(settings.log_format, settings.log_level, settings.secrets())
        print(f"Simulator on {running.root}; batch {batch.name}; ledger {settings.ledger}\n")
        for title in ("First run", "Same command again: resumes, sends nothing already final"):
            print(f"== {title}: cancel-orders run orders.csv --yes")
            source = CsvSource(batch, IdValidator(settings.id_pattern))
            ledger = ledger_at(settings.ledger)
            options = RunOptions(total=source.scan())
            try:
                report = await Runner(settings, source, ledger, options).execute()
            finally:
                ledger.close()
            sys.stdout.write(render_run(report.as_dict()) + "\n")
            if report.exit_code not in (0, 1):
                return report.exit_code  # the demo itself went wrong
        print("== cancel-orders report")
        ledger = ledger_at(settings.ledger, readonly=True)
        try:
            write_table(ledger, sys.stdout)
            print("\nLeft for `cancel-orders retry`:")
            write_table_rows(ledger)
        finally:
            ledger.close()
        print(
            f"\nThe simulator saw {running.sim.stats.as_dict()['deletes']} DELETEs, "
            f"at most {running.sim.stats.max_in_window()} in any one second "
            f"(--rate {settings.rate:g})."
        )
    finally:
        await running.close()
    return 0


def write_table_rows(ledger: Ledger) -> None:
    """The orders a person still has to look at."""
    for row in ledger.rows("retryable_failed"):
        order_id, outcome, status, code, message, attempts, _ = row
        print(
            f"  {order_id}  {outcome}  http={status}  code={code}  attempts={attempts}"
            + (f"  {message}" if message else "")
        )
