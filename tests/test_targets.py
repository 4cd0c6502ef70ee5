"""Acting on the right target, through the CLI against the simulator: a ledger bound to its
base URL, a base URL that misses the API, a short outage at a low --max-attempts, short-lived
tokens."""

from __future__ import annotations

import asyncio
import signal
from typing import Any

from tests.support import Cli, ids, ledger_rows, max_in_window, send_times, sim_env, write_ids
from worker.simulator import RunningSimulator


async def test_a_ledger_belongs_to_its_target(cli: Cli, make_sim: Any, tmp_path: Any) -> None:
    """A run against one base URL, then the same command against another with the same
    ledger: refused with exit 2 naming both URLs, nothing sent to the second."""
    rehearsal, production = await make_sim(), await make_sim()
    ledger = tmp_path / "cancellations.sqlite"
    src = write_ids(tmp_path / "o.csv", ids("CDE", 20))
    first = await cli.run("run", str(src), "--yes", env=sim_env(rehearsal, ledger))
    assert first.code == 0, first.stderr
    again = await cli.run("run", str(src), "--yes", env=sim_env(production, ledger))
    assert again.code == 2, again.stderr
    last = again.stderr.strip().splitlines()[-1]
    assert rehearsal.base_url in last
    assert production.base_url in last
    assert production.sim.stats.arrivals == []
    assert production.sim.stats.token_requests == 0
    retried = await cli.run("retry", "--yes", env=sim_env(production, ledger))
    assert retried.code == 2
    assert production.sim.stats.arrivals == []
    same = await cli.run("run", str(src), "--yes", env=sim_env(rehearsal, ledger))
    assert same.code == 0, same.stderr


async def test_a_base_url_that_misses_the_api(
    cli: Cli, sim: RunningSimulator, tmp_path: Any
) -> None:
    """The gateway answers 404 "Resource not found" to a wrong path: exit 3 at once, a
    one-line error naming the base URL setting, every order still pending."""
    ledger = tmp_path / "l.sqlite"
    wrong = sim.base_url.replace("/v1", "/v2")
    env = sim_env(sim, ledger, MOUVONE_BASE_URL=wrong, MOUVONE_CONCURRENCY="4")
    orders = ids("CDE", 50)
    done = await cli.run("run", str(write_ids(tmp_path / "o.csv", orders)), "--yes", env=env)
    assert done.code == 3, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert "404" in last
    assert "MOUVONE_BASE_URL" in last
    assert len(sim.sim.stats.arrivals) <= 4
    rows = ledger_rows(ledger)
    assert {r["outcome"] for r in rows.values()} == {"pending"}
    assert sim.sim.stats.deletes == {}  # the simulator's orders were never reached


async def test_the_api_own_404_is_not_found(cli: Cli, sim: RunningSimulator, tmp_path: Any) -> None:
    """A 404 whose body is the API's error object with CUSTOMER_ORDER_NOT_FOUND is the
    order's outcome (not_found), not a reason to stop."""
    ledger = tmp_path / "l.sqlite"
    src = write_ids(tmp_path / "o.csv", ["NOF0000000001", "CDE0000000001"])
    done = await cli.run("run", str(src), "--yes", env=sim_env(sim, ledger))
    assert done.code == 1, done.stderr
    rows = ledger_rows(ledger)
    assert rows["NOF0000000001"]["outcome"] == "not_found"
    assert rows["NOF0000000001"]["http_status"] == 404
    assert rows["CDE0000000001"]["outcome"] == "cancelled"


async def test_short_outage_exhausts_no_order(
    cli: Cli, sim: RunningSimulator, tmp_path: Any
) -> None:
    """503 to everything for 5 s (three attempts at these backoffs take under 2 s) from the
    middle of a 300-order run at --max-attempts 3 --rate 60 --concurrency 8: exit 0, no order
    retryable_failed."""
    ledger = tmp_path / "l.sqlite"
    env = sim_env(
        sim,
        ledger,
        MOUVONE_RATE="60",
        MOUVONE_CONCURRENCY="8",
        MOUVONE_MAX_ATTEMPTS="3",
        MOUVONE_BACKOFF_BASE="0.5",
        MOUVONE_BACKOFF_CAP="30",
    )
    src = write_ids(tmp_path / "o.csv", ids("CDE", 300))
    run = asyncio.create_task(cli.run("run", str(src), "--yes", env=env, timeout=120))
    await sim.sim.wait_for_deletes(150)
    sim.sim.outage(5, "503")
    done = await run
    assert done.code == 0, done.stderr[-3000:]
    rows = ledger_rows(ledger)
    assert {r["outcome"] for r in rows.values()} == {"cancelled"}
    assert len(rows) == 300
    assert sim.sim.stats.outage_answers > 0


async def test_two_second_tokens(cli: Cli, make_sim: Any, tmp_path: Any) -> None:
    """A token endpoint that issues 2-second tokens: refreshed ahead of their end, so no
    DELETE is ever answered 401."""
    running = await make_sim(token_ttl_s=2.0)
    ledger = tmp_path / "l.sqlite"
    env = sim_env(running, ledger, MOUVONE_RATE="40", MOUVONE_CONCURRENCY="8")
    src = write_ids(tmp_path / "o.csv", ids("CDE", 200))
    done = await cli.run("run", str(src), "--yes", env=env, timeout=60)
    assert done.code == 0, done.stderr[-3000:]
    assert running.sim.stats.statuses[401] == 0
    assert running.sim.stats.token_requests >= 3


async def test_no_second_over_the_rate_after_a_stall(
    cli: Cli, sim: RunningSimulator, tmp_path: Any
) -> None:
    """A run frozen (as by Ctrl-Z) for 3 s at --rate 10, then woken: the slots it missed do
    not all go at once; no second carries more than 10 requests as the client sent them."""
    ledger = tmp_path / "l.sqlite"
    env = sim_env(sim, ledger, MOUVONE_RATE="10", MOUVONE_CONCURRENCY="16")
    src = write_ids(tmp_path / "o.csv", ids("CDE", 80))
    proc = await cli.start("run", str(src), "--yes", env=env)
    await asyncio.wait_for(sim.sim.wait_for_deletes(20), 30)
    proc.send_signal(signal.SIGSTOP)
    await asyncio.sleep(3)  # the freeze itself, not a synchronisation
    proc.send_signal(signal.SIGCONT)
    _, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()[-2000:]
    assert max_in_window(send_times(ledger)) <= 10
    assert sim.sim.stats.statuses[429] == 0


async def test_a_wrong_host_is_not_an_outage(
    cli: Cli, sim: RunningSimulator, tmp_path: Any
) -> None:
    """A base URL or a token URL on a port where nothing listens: exit 2 within seconds,
    naming host and port, no attempt spent; an unresolvable name the same."""
    import socket  # noqa: PLC0415

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed again: nothing listens there
    ledger = tmp_path / "l.sqlite"
    src = write_ids(tmp_path / "o.csv", ids("CDE", 5))
    for key, value in (
        ("MOUVONE_BASE_URL", f"http://127.0.0.1:{port}/customer-orders/v1"),
        ("MOUVONE_TOKEN_URL", f"http://127.0.0.1:{port}/token"),
    ):
        env = sim_env(sim, ledger, **{key: value})
        done = await cli.run("run", str(src), "--yes", "--force", env=env, timeout=20)
        assert done.code == 2, done.stderr[-2000:]
        last = done.stderr.strip().splitlines()[-1]
        assert f"127.0.0.1:{port}" in last
        assert key in last
        assert "next: first fix what stopped it (above), then resume" in done.stdout
        assert all(r["attempts"] == 0 for r in ledger_rows(ledger).values())


async def test_max_orders_refuses_before_sending(
    cli: Cli, sim: RunningSimulator, tmp_path: Any
) -> None:
    """--max-orders N: more orders to send than N (after dropping invalid, duplicate and final
    ones) is refused, exit 2, the count and the cap named, nothing sent; at the cap it runs."""
    ledger = tmp_path / "l.sqlite"
    src = write_ids(tmp_path / "o.csv", [*ids("CDE", 3), "CDE0000000001", "bad"])
    env = sim_env(sim, ledger)
    over = await cli.run("run", str(src), "--yes", "--max-orders", "2", env=env)
    assert over.code == 2
    assert (
        "3 orders would be sent, more than --max-orders 2" in over.stderr.strip().splitlines()[-1]
    )
    assert sim.sim.stats.token_requests == 0
    assert not ledger.exists() or ledger_rows(ledger) == {}
    at = await cli.run("run", str(src), "--yes", "--max-orders", "3", env=env)
    assert at.code == 1, at.stderr[-2000:]  # the invalid one
    assert len(sim.sim.stats.deletes) == 3


async def test_max_orders_caps_a_selection(cli: Cli, make_sim: Any, tmp_path: Any) -> None:
    """The nightly `run --select` with --max-orders: a selection larger than the cap is
    refused before any DELETE."""
    running = await make_sim(orders=300, seed=4)
    env = sim_env(running, tmp_path / "s.sqlite")
    done = await cli.run(
        "run", "--select", "--status", "Draft", "--yes", "--max-orders", "1", env=env
    )  # fmt: skip
    assert done.code == 2, done.stderr[-2000:]
    assert "more than --max-orders 1" in done.stderr.strip().splitlines()[-1]
    assert running.sim.stats.deletes == {}
