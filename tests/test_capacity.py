"""Using the API's capacity: an order waiting for its backoff does not hold a worker, through
the CLI against the simulator (the learned gateway limit is in tests/test_limiter.py)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from tests.fakes import FakeClock
from tests.support import Cli, ids, ledger_rows, sim_env, write_ids
from worker.domain.location import PostgresUrl
from worker.ledger import ledger_at
from worker.pipeline.order import OrderState
from worker.pipeline.shelf import OrderPicker, RetryShelf
from worker.simulator import RunningSimulator


async def test_a_backoff_frees_its_worker(cli: Cli, sim: RunningSimulator, tmp_path: Path) -> None:
    """--concurrency 1: while an order answered 503 waits for its retry, the one worker sends
    the other orders; the order still gets exactly its attempts (503, 503, then cancelled) and
    every order is recorded once."""
    ledger = tmp_path / "l.sqlite"
    wanted = ["TMP0000000002", *ids("CDE", 60)]
    src = write_ids(tmp_path / "o.csv", wanted)
    env = sim_env(
        sim, ledger, MOUVONE_BACKOFF_BASE="0.5", MOUVONE_BACKOFF_CAP="1", MOUVONE_RATE="400"
    )
    done = await cli.run("run", str(src), "--yes", "--concurrency", "1", env=env)
    assert done.code == 0, done.stderr[-2000:]
    order = [order for method, order, _, _ in sim.sim.stats.journal if method == "DELETE"]
    tries = [k for k, o in enumerate(order) if o == "TMP0000000002"]
    assert len(tries) == 3
    assert tries[2] - tries[0] > 2  # other orders went while it waited
    rows = ledger_rows(ledger)
    assert rows["TMP0000000002"]["attempts"] == 3
    assert {r["outcome"] for r in rows.values()} == {"cancelled"}
    assert len(order) == len(wanted) + 2


async def test_a_stop_leaves_orders_waiting_for_a_retry_pending(
    cli: Cli, sim: RunningSimulator, tmp_path: Path
) -> None:
    """A stop (here --run-time) while orders wait for their retry on timers (up to 30 s away):
    the run ends at once, they are recorded pending with the attempts they had, and the other
    orders are cancelled."""
    ledger = tmp_path / "l.sqlite"
    waiting = [f"TMP000000{k:03d}0" for k in range(3)]  # ending in 0: 503 on every attempt
    src = write_ids(tmp_path / "o.csv", [*waiting, *ids("CDE", 20)])
    env = sim_env(sim, ledger, MOUVONE_BACKOFF_BASE="30", MOUVONE_BACKOFF_CAP="30")
    stopped = await cli.run("run", str(src), "--yes", "--run-time", "2s", env=env, timeout=20)
    assert stopped.code == 4, stopped.stderr[-2000:]
    rows = ledger_rows(ledger)
    assert {rows[o]["outcome"] for o in waiting} == {"pending"}
    assert all(rows[o]["attempts"] >= 1 for o in waiting)
    assert all(rows[o]["outcome"] == "cancelled" for o in ids("CDE", 20))


class _Source:
    """Orders from a list, then none; a take can be made to wait."""

    def __init__(self, orders: list[str]) -> None:
        self.orders = orders
        self.gate = asyncio.Event()
        self.gate.set()

    async def take(self) -> OrderState | None:
        await self.gate.wait()
        return OrderState(self.orders.pop(0)) if self.orders else None

    def left(self) -> int | None:
        return None  # more may come


async def test_a_due_retry_goes_before_the_source_and_a_stop_keeps_what_waits() -> None:
    """On the virtual clock: an order shelved for 2 s comes back before the source's next one
    once its time is over, even while the source has nothing to give; a stop hands back what
    still waits, with why."""
    clock = FakeClock()
    stopping = [False]
    orders = OrderPicker(RetryShelf(clock), lambda: stopping[0])
    source = _Source(["CDE0000000001", "CDE0000000002"])
    first = await orders.next(source)
    assert first is not None
    orders.shelf.put(first, 2.0)
    source.gate.clear()  # the source is slow: nothing to give for now
    waiting = asyncio.ensure_future(orders.next(source))
    await clock.run(waiting)
    assert waiting.result() is first
    assert clock.now == 1002.0
    source.gate.set()
    second = await orders.next(source)
    assert second is not None
    assert second.order_id == "CDE0000000002"
    orders.shelf.put(second, 30.0)
    stopping[0] = True
    left = list(orders.leftovers())
    assert [(s.order_id, "retry" in why) for s, why in left] == [("CDE0000000002", True)]
    assert await orders.next(source) is None


class _Input(_Source):
    """A whole input: every order already known, so the orders left are counted."""

    def left(self) -> int | None:
        return len(self.orders)


async def test_at_the_end_of_the_input_fresh_orders_go_before_a_due_retry_for_a_few_seconds() -> (
    None
):
    """On the virtual clock, at 10 orders a second: a retry that became due waits behind the
    fresh orders left while all of them would go within RETRY_LAG_S (5 s) of its time, and no
    longer; a source whose end is not known (a stream) never holds a due retry back."""
    clock = FakeClock()
    orders = OrderPicker(RetryShelf(clock), lambda: False, lambda: 10.0)
    source = _Input([f"CDE{k:010d}" for k in range(45)])
    retry = OrderState("TMP0000000002")
    orders.shelf.put(retry, 0.0)
    await clock.run(asyncio.ensure_future(asyncio.sleep(0)))  # its timer: due now
    assert orders.shelf.oldest_due() == clock.now
    # 45 left: 4.5 s at the pace, within 5 s of its time: the fresh ones go first
    taken = [await orders.next(source) for _ in range(5)]
    assert [s.order_id for s in taken if s] == [f"CDE{k:010d}" for k in range(5)]
    clock.advance(1.0)  # 40 left (4 s) and the retry 1 s late: 5 s, still within
    fresh = await orders.next(source)
    assert fresh is not None
    assert fresh.order_id == "CDE0000000005"
    clock.advance(0.5)  # 39 left (3.9 s), 1.5 s late: 5.4 s, past its lag: the retry goes
    assert await orders.next(source) is retry
    # the same retry before 60 orders left (6 s at the pace): it goes at once
    orders = OrderPicker(RetryShelf(clock), lambda: False, lambda: 10.0)
    source = _Input([f"CDE{k:010d}" for k in range(60)])
    orders.shelf.put(retry, 0.0)
    await clock.run(asyncio.ensure_future(asyncio.sleep(0)))
    assert await orders.next(source) is retry
    # a stream: the orders left are never known
    orders = OrderPicker(RetryShelf(clock), lambda: False, lambda: 10.0)
    orders.shelf.put(retry, 0.0)
    await clock.run(asyncio.ensure_future(asyncio.sleep(0)))
    assert await orders.next(_Source(["CDE0000000001"])) is retry


async def test_the_last_retries_go_after_the_last_fresh_orders(
    cli: Cli, sim: RunningSimulator, tmp_path: Path
) -> None:
    """Through the CLI, one worker at --rate 100: an order answered 503 twice near the start
    of an input that takes under 5 s at the rate is retried after the fresh orders, back to back
    at the end, instead of at its backoff's time with the last slots left empty while it runs
    out; every order is cancelled and the retried one has its three attempts. (Sixth in the
    input: the whole input is claimed long before its first answer.)"""
    ledger = tmp_path / "l.sqlite"
    fresh = ids("CDE", 60)
    wanted = [*fresh[:5], "TMP0000000002", *fresh[5:]]
    env = sim_env(
        sim, ledger, MOUVONE_BACKOFF_BASE="0.05", MOUVONE_BACKOFF_CAP="0.1", MOUVONE_RATE="100"
    )
    done = await cli.run(
        "run", str(write_ids(tmp_path / "o.csv", wanted)), "--yes", "--concurrency", "1", env=env
    )
    assert done.code == 0, done.stderr[-2000:]
    order = [order for method, order, _, _ in sim.sim.stats.journal if method == "DELETE"]
    assert order[5] == "TMP0000000002"
    assert order[-2:] == ["TMP0000000002", "TMP0000000002"], order
    assert sorted(order[:5] + order[6:-2]) == fresh
    rows = ledger_rows(ledger)
    assert rows["TMP0000000002"]["attempts"] == 3
    assert {r["outcome"] for r in rows.values()} == {"cancelled"}


async def test_the_ledger_remembers_the_busiest_second_the_gateway_took(
    cli: Cli, make_sim: Any, tmp_path: Path, ledger_location: str
) -> None:
    """A run against a 40/s gateway limit at --rate 80: the ledger's memory of the busiest
    second answered without a 429 (what a resumed run's pace may climb back to) is near the
    limit."""
    running = await make_sim(rate_limit=40)
    env = sim_env(running, ledger_location, MOUVONE_RATE="80")
    done = await cli.run("run", str(write_ids(tmp_path / "o.csv", ids("CDE", 120))), "--yes",
                         env=env)  # fmt: skip
    assert done.code == 0, done.stderr[-2000:]
    opened = ledger_at(PostgresUrl(ledger_location) if "://" in ledger_location
                       else Path(ledger_location), readonly=True)  # fmt: skip
    try:
        remembered = opened.busiest_clean_second()
    finally:
        opened.close()
    # counted at the client's send times, which a loaded machine spreads or bunches by a few
    # milliseconds against the gateway's arrivals
    assert 30 <= remembered <= 40 * 1.1, remembered
