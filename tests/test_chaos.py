"""Several hosts on one truth, all at once: three runs on one PostgreSQL ledger with different
lease terms, and a consumer group of three writing to the same ledger, through a kill -9, a
freeze (SIGSTOP) longer than a lease, two cuts of every database connection and two cuts of
every Redis connection. Every order ends with one final outcome; only requests in flight at the
freeze reach the API after its final answer; the survivors end on their own; the group keeps
to its rate at the clients' send times.

Needs PostgreSQL and redis-server (under CI=true their absence fails the test)."""

from __future__ import annotations

import asyncio
import signal
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg

from tests.support import (
    Cli,
    Queue,
    accounted,
    assert_one_result_each,
    cut_database,
    ids,
    ledger_rows,
    max_in_window,
    table_rows,
    untraced,
    write_ids,
)
from worker.simulator import RunningSimulator

RUN_ORDERS = ids("CDE", 1000)
QUEUE_ORDERS = ids("FGH", 1200)
GROUP_RATE = 100
FINAL = {"cancelled", "already_cancelled"}


async def _answered(pg_url: str, prefix: str, at_least: int) -> None:
    """Until the ledger holds ``at_least`` answered orders of ``prefix``."""
    query = (
        f"SELECT count(*) AS n FROM orders WHERE outcome <> 'pending' AND order_id LIKE '{prefix}%'"
    )
    for _ in range(2400):
        try:
            if table_rows(pg_url, query)[0]["n"] >= at_least:
                return
        except psycopg.errors.UndefinedTable:  # no run has created the ledger yet
            pass
        await asyncio.sleep(0.05)
    raise AssertionError(f"fewer than {at_least} {prefix} orders answered")


async def _lease_lapsed(pg_url: str, pid: int) -> None:
    """Until the run of process ``pid`` has a lease older than its own term."""
    query = (
        "SELECT count(*) AS n FROM runs WHERE finished_at IS NULL AND process LIKE %s "
        "AND heartbeat_at < now() - make_interval(secs => lease_s)"
    )
    with psycopg.connect(pg_url, autocommit=True) as db:
        for _ in range(2400):
            found = db.execute(query, (f"%/{pid}",)).fetchone()
            if found is not None and found[0] == 1:
                return
            await asyncio.sleep(0.05)
    raise AssertionError(f"the lease of process {pid} never lapsed")


async def _cut_redis(queue: Queue) -> int:
    """End every client connection of the test's own Redis server, once there is one: right
    after a cut, the consumers may all be between their reconnections."""
    for _ in range(2400):
        cut = int(await queue.redis.client_kill_filter(_type="normal", skipme=True))
        if cut:
            return cut
        await asyncio.sleep(0.05)
    return 0


async def test_runs_and_a_group_on_one_ledger_through_kills_freezes_and_cuts(
    cli: Cli,
    make_sim: Any,
    private_queue: Queue,
    tmp_path: Path,
    pg_url: str,
    spawned: list[Any],
) -> None:
    """Runs with --claim-idle 1.5, 3 and 1, one killed and one frozen past its lease; three
    consumers, one killed and one frozen; the database and Redis cut twice each."""
    sim: RunningSimulator = await make_sim(latency_ms=5)
    queue = private_queue
    env = untraced(queue.env(sim, tmp_path, MOUVONE_LEDGER=pg_url, MOUVONE_RATE="100"))
    src = write_ids(tmp_path / "runs.csv", RUN_ORDERS)
    enqueued = await cli.run("enqueue", "--yes", str(write_ids(tmp_path / "q.csv", QUEUE_ORDERS)),
                             env=env)  # fmt: skip
    assert enqueued.code == 0, enqueued.stderr[-2000:]

    async def start(*args: str) -> Any:
        proc = await cli.start(*args, env=env)
        spawned.append(proc)
        return proc

    run = ["run", str(src), "--yes"]
    killed_run = await start(*run, "--claim-idle", "1.5", "--concurrency", "2")
    frozen_run = await start(*run, "--claim-idle", "3", "--concurrency", "2")
    group = ["consume", "--exit-when-empty", "--claim-idle", "1", "--rate", str(GROUP_RATE)]
    consumers = [await start(*group, "--consumer", f"c{n}", "--concurrency", "4") for n in range(3)]
    killed_consumer, frozen_consumer, _ = consumers

    await _answered(pg_url, "CDE", 100)
    await _answered(pg_url, "FGH", 100)
    for proc in (killed_run, killed_consumer):
        proc.kill()
        await proc.wait()
    third_run = await start(*run, "--claim-idle", "1", "--concurrency", "4")

    await _answered(pg_url, "CDE", 400)
    for proc in (frozen_run, frozen_consumer):
        proc.send_signal(signal.SIGSTOP)
    try:
        await _lease_lapsed(pg_url, frozen_run.pid)
        await _answered(pg_url, "FGH", 500)  # the others went on without the frozen consumer
        assert cut_database(pg_url) >= 1
        assert await _cut_redis(queue) >= 1
    finally:
        for proc in (frozen_run, frozen_consumer):
            proc.send_signal(signal.SIGCONT)
    await _answered(pg_url, "FGH", 700)  # the group is back at work, connected again
    assert await _cut_redis(queue) >= 1
    await _answered(pg_url, "CDE", 700)
    assert cut_database(pg_url) >= 1

    survivors = [frozen_run, third_run, *consumers[1:]]
    ends = await asyncio.wait_for(asyncio.gather(*(p.communicate() for p in survivors)), 150)
    said = "\n".join(  # each survivor's summary and last lines, whole (a list's repr is cut)
        f"--- exit {p.returncode}\n{o.decode()}{e.decode()[-1500:]}"
        for p, (o, e) in zip(survivors, ends, strict=True)
    )
    assert [p.returncode for p in survivors] == [0, 0, 0, 0], said
    for _, err in ends[:2]:  # the runs: every order they read accounted for
        accounted(err)

    rows = ledger_rows(pg_url)
    assert set(rows) == {*RUN_ORDERS, *QUEUE_ORDERS}
    assert {r["outcome"] for r in rows.values()} <= FINAL
    assert_one_result_each(await queue.results(), set(QUEUE_ORDERS))
    deletes = Counter(o for method, o, _, _ in sim.sim.stats.journal if method == "DELETE")
    assert set(deletes) <= {*RUN_ORDERS, *QUEUE_ORDERS}
    # Only a request on the wire when a process froze reaches the API after the order's
    # final answer: at most one per worker of the frozen run (2) and consumer (4).
    assert sim.sim.stats.resent_final <= 6, sim.sim.stats.resent_final
    sent = table_rows(
        pg_url,
        "SELECT a.sent_at FROM attempts a JOIN runs r USING (run_id) WHERE r.command = 'consume'",
    )
    times = [datetime.fromisoformat(str(a["sent_at"]).replace("Z", "+00:00")) for a in sent]
    assert max_in_window(t.timestamp() for t in times) <= GROUP_RATE
