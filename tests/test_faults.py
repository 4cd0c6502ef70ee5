"""The fault matrix, end to end against the simulator over real HTTP: every fault the gateway
can throw, each order ending in the outcome the contract prescribes, the server never seeing
more than --rate, and no final order sent twice. Then outages, an adaptive rate under a gateway
limit lower than --rate, and the failure threshold."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from tests.support import ledger_rows, max_in_window, run_ids, send_times
from worker.simulator import RunningSimulator

RATE = 200


def ids(prefix: str, n: int, last_digit: int = 2) -> list[str]:
    """n IDs with this behaviour prefix; the last digit is how often a transient fault repeats."""
    return [f"{prefix}{k:09d}{last_digit}" for k in range(1, n + 1)]


def assert_clean(running: RunningSimulator, tmp_path: Path, rate: float = RATE) -> None:
    """No second held more than the rate of requests as the client sent them (the attempt
    log), and the server saw no final order sent again."""
    assert max_in_window(send_times(tmp_path / "ledger.sqlite")) <= rate
    assert running.sim.stats.resent_final == 0


@pytest.mark.parametrize(
    ("fault", "config", "prefix", "expected"),
    [
        ("429 storm", {"rate_limit": 40, "retry_after_s": 1}, "CDE", "cancelled"),
        ("429 on single orders", {"retry_after_s": 1}, "THR", "cancelled"),
        ("503 bursts", {}, "TMP", "cancelled"),
        ("random 503s", {"error_rate": 0.25, "seed": 7}, "CDE", "cancelled"),
        ("502 with an HTML body", {}, "HTM", "cancelled"),
        ("500 with malformed JSON", {}, "BAD", "cancelled"),
        ("connection resets", {}, "RST", "cancelled"),
        ("random connection resets", {"reset_rate": 0.2, "seed": 3}, "CDE", "cancelled"),
        ("stalled past the timeout", {"stall_s": 3}, "SLO", "cancelled"),
        ("token endpoint failing, then up", {"token_failures": 2}, "CDE", "cancelled"),
        ("CONFLICT then success", {}, "CFL", "cancelled"),
        ("already cancelled", {}, "ALR", "already_cancelled"),
        ("business rule", {}, "CTR", "rejected"),
    ],
)
async def test_fault_matrix(
    make_sim: Any,
    tmp_path: Path,
    fault: str,
    config: dict[str, Any],
    prefix: str,
    expected: str,
) -> None:
    """Each fault, 60 orders at once: every one ends as the contract says."""
    running = await make_sim(**config)
    few = prefix in ("THR", "SLO")  # each of their faults pauses everyone or takes a timeout
    batch = ids(prefix, 4 if prefix == "THR" else 60, last_digit=1 if few else 2)
    report = await run_ids(
        running, tmp_path, batch, rate=RATE, concurrency=16, max_attempts=8, timeout=0.5
    )
    rows = ledger_rows(tmp_path / "ledger.sqlite")
    assert {r["outcome"] for r in rows.values()} == {expected}, fault
    assert len(rows) == len(batch)
    assert report.exit_code == (0 if expected in ("cancelled", "already_cancelled") else 1)
    assert_clean(running, tmp_path)


@pytest.mark.parametrize("kind", ["503", "502html", "reset", "stall"])
async def test_short_outage_spends_no_attempts(make_sim: Any, tmp_path: Path, kind: str) -> None:
    """An outage of every request mid-run opens the breaker; when it ends every order is
    cancelled, none exhausted its attempts, and the run says how long the outage lasted."""
    running = await make_sim(stall_s=2)
    batch = ids("CDE", 300)

    async def outage() -> None:
        await running.sim.wait_for_deletes(60)
        running.sim.outage(1.5, kind)

    starting = asyncio.create_task(outage())
    report = await run_ids(
        running, tmp_path, batch, rate=RATE, concurrency=16, max_attempts=3, timeout=0.5
    )
    await starting
    rows = ledger_rows(tmp_path / "ledger.sqlite")
    assert {r["outcome"] for r in rows.values()} == {"cancelled"}
    assert report.exit_code == 0
    assert report.summary.outage_s >= 1.0
    assert running.sim.stats.outage_answers < 60  # the breaker stopped the spending
    assert_clean(running, tmp_path)


async def test_long_outage_stops_with_orders_pending(make_sim: Any, tmp_path: Path) -> None:
    """An outage longer than --outage-timeout stops the run (exit 3) with the unanswered orders
    `pending`, never `retryable_failed`; once the API is back a resume finishes the job."""
    running = await make_sim()
    batch = ids("CDE", 200)

    async def outage() -> None:
        await running.sim.wait_for_deletes(40)
        running.sim.outage(3600, "503")

    starting = asyncio.create_task(outage())
    report = await run_ids(
        running, tmp_path, batch, rate=RATE, concurrency=16, max_attempts=3, outage_timeout=2
    )
    await starting
    assert report.exit_code == 3
    assert "outage timeout" in (report.reason or "")
    outcomes = {r["outcome"] for r in ledger_rows(tmp_path / "ledger.sqlite").values()}
    assert outcomes == {"cancelled", "pending"}

    running.sim.outage(0)
    again = await run_ids(running, tmp_path, batch, rate=RATE, concurrency=16)
    assert again.exit_code == 0
    outcomes = {r["outcome"] for r in ledger_rows(tmp_path / "ledger.sqlite").values()}
    assert outcomes == {"cancelled"}
    assert_clean(running, tmp_path)


async def test_rate_adapts_to_a_lower_gateway_limit(make_sim: Any, tmp_path: Path) -> None:
    """With --rate twice the gateway's real limit, fewer than 10% of 1,000 DELETEs get a 429,
    and no second carries more than --rate."""
    running = await make_sim(rate_limit=150, retry_after_s=1)
    batch = ids("CDE", 1000)
    report = await run_ids(running, tmp_path, batch, rate=300, concurrency=16, max_attempts=10)
    assert report.exit_code == 0
    statuses = running.sim.stats.statuses
    throttled = statuses[429]
    assert throttled < 0.10 * sum(statuses.values()), statuses
    assert report.summary.lowest_rate is not None
    assert report.summary.lowest_rate < 300
    assert_clean(running, tmp_path, rate=300)


async def test_failure_threshold_stops_a_wrong_input_early(make_sim: Any, tmp_path: Path) -> None:
    """--max-failure-rate stops the run (exit 3) once enough orders failed; the rest are left
    pending and were never sent."""
    running = await make_sim()
    batch = ids("NFD", 1000)
    report = await run_ids(
        running,
        tmp_path,
        batch,
        rate=RATE,
        concurrency=4,
        max_failure_rate=20,
        min_orders=25,
    )
    assert report.exit_code == 3
    assert "max-failure-rate" in (report.reason or "")
    sent = sum(running.sim.stats.deletes.values())
    assert 25 <= sent < 60
    rows = ledger_rows(tmp_path / "ledger.sqlite")
    assert sum(r["outcome"] == "not_found" for r in rows.values()) == sent
    assert {r["outcome"] for r in rows.values()} == {"not_found", "pending"}


async def test_orders_that_always_fail_among_good_ones(make_sim: Any, tmp_path: Path) -> None:
    """Orders answered 500 every time end `retryable_failed` after --max-attempts, in good
    time: their retries alone never open the circuit breaker."""
    running = await make_sim()
    batch = ids("CDE", 100) + ids("ERR", 10, last_digit=0)
    report = await run_ids(running, tmp_path, batch, rate=RATE, concurrency=16, max_attempts=4)
    rows = ledger_rows(tmp_path / "ledger.sqlite")
    assert report.exit_code == 1
    assert report.summary.outage_s == 0
    failed = {k for k, r in rows.items() if r["outcome"] == "retryable_failed"}
    assert failed == set(ids("ERR", 10, last_digit=0))
    assert all(rows[k]["attempts"] == 4 for k in failed)


async def test_orders_that_always_fail_are_not_an_outage(make_sim: Any, tmp_path: Path) -> None:
    """Every order's DELETE answers 500 while the API answers GETs: the breaker opens, its GET
    probe finds the API up, and the orders' failures are their own: each spends its attempts
    and ends retryable_failed (exit 1), the run is not stopped as an outage (exit 3)."""
    running = await make_sim()
    batch = ids("ERR", 100, last_digit=0)
    report = await run_ids(
        running, tmp_path, batch, concurrency=16, outage_timeout=5, max_attempts=3
    )
    assert report.exit_code == 1, report.reason
    rows = ledger_rows(tmp_path / "ledger.sqlite")
    assert {r["outcome"] for r in rows.values()} == {"retryable_failed"}
    assert min(r["attempts"] for r in rows.values()) >= 3
    assert sum(running.sim.stats.gets.values()) >= 1  # the probes


async def test_a_few_bad_orders_among_good_ones_end_failed_not_as_an_outage(
    make_sim: Any, tmp_path: Path
) -> None:
    """Twenty orders that always answer 500 at the head of 300 good ones: the good ones are
    cancelled, the bad ones end retryable_failed after their attempts, and the run is not
    stopped as an outage however short --outage-timeout is."""
    running = await make_sim()
    bad = ids("ERR", 20, last_digit=0)
    good = ids("CDE", 300)
    report = await run_ids(
        running, tmp_path, [*bad, *good], rate=RATE, concurrency=16, outage_timeout=3,
        max_attempts=4,
    )  # fmt: skip
    assert report.exit_code == 1, report.reason
    rows = ledger_rows(tmp_path / "ledger.sqlite")
    assert {rows[o]["outcome"] for o in bad} == {"retryable_failed"}
    assert {rows[o]["outcome"] for o in good} == {"cancelled"}
    assert_clean(running, tmp_path)


async def test_failure_threshold_needs_min_orders(make_sim: Any, tmp_path: Path) -> None:
    """Below --min-orders finished orders the threshold does not apply."""
    running = await make_sim()
    report = await run_ids(running, tmp_path, ids("NFD", 10), max_failure_rate=0, min_orders=50)
    assert report.exit_code == 1
