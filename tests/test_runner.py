"""Whole runs in-process against the simulator over real HTTP: outcomes, resume, fatal answers,
credentials, pauses, dry runs, retry, and stopping."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from tests.support import ledger_rows, max_in_window, run_ids, send_times, settings_for, write_ids
from worker.domain.errors import LedgerError
from worker.domain.models import RunOptions
from worker.ledger import SqliteLedger
from worker.runs.runner import Runner
from worker.simulator import RunningSimulator
from worker.sources import IdValidator
from worker.sources.csv_file import CsvSource
from worker.sources.ledger_source import LedgerSource

EXPECTED = {
    "CDE0000000001": "cancelled",
    "CDE0000000002": "cancelled",
    "ALR0000000001": "already_cancelled",
    "NFD0000000001": "not_found",
    "NOF0000000001": "not_found",
    "NMO0000000001": "rejected",
    "CTR0000000001": "rejected",
    "SUB0000000001": "rejected",
    "DLV0000000001": "rejected",
    "NST0000000001": "rejected",
    "UNK0000000001": "rejected",
    "WFM0000000001": "invalid",
    "CFL0000000001": "cancelled",
    "TMP0000000002": "cancelled",
    "HTM0000000001": "cancelled",
    "BAD0000000001": "cancelled",
    "RST0000000001": "cancelled",
    "SLO0000000001": "cancelled",
    "THR0000000001": "cancelled",
    "QTA0000000001": "cancelled",
    "ERR0000000000": "retryable_failed",
    "TMP0000000000": "retryable_failed",
    "bad-id": "invalid",
}


async def test_mixed_batch(make_sim: Any, tmp_path: Path) -> None:
    """Every simulated behaviour ends in the contract's outcome; one log event per order."""
    running = await make_sim(stall_s=3, quota_retry_after_s=1)
    with capture_logs() as logs:
        report = await run_ids(
            running, tmp_path, [*EXPECTED, "CDE0000000001"], timeout=0.5, max_attempts=3, rate=50
        )
    rows = ledger_rows(tmp_path / "ledger.sqlite")
    assert {k: v["outcome"] for k, v in rows.items()} == EXPECTED
    assert report.exit_code == 1
    assert report.summary.duplicates == 1
    assert rows["TMP0000000002"]["attempts"] == 3
    assert rows["ERR0000000000"]["attempts"] == 3
    assert rows["ERR0000000000"]["error_code"] == "HTTP_500"
    assert rows["SUB0000000001"]["error_code"] == "R0008"
    assert rows["SLO0000000001"]["attempts"] == 2
    assert rows["bad-id"]["error_code"] == "WRONG_FORMAT"
    events = [e for e in logs if e["event"] == "order"]
    assert sorted(e["order_id"] for e in events) == sorted(EXPECTED)
    for event in events:
        assert {"outcome", "http_status", "error_code", "attempts", "latency_ms"} <= set(event)
    assert max_in_window(send_times(tmp_path / "ledger.sqlite")) <= 50


async def test_success_then_resume(sim: RunningSimulator, tmp_path: Path) -> None:
    """All cancelled: exit 0. The same input again sends nothing and still exits 0."""
    ids = [f"CDE{n:010d}" for n in range(1, 41)]
    first = await run_ids(sim, tmp_path, ids)
    assert first.exit_code == 0
    assert sum(sim.sim.stats.deletes.values()) == 40
    second = await run_ids(sim, tmp_path, ids)
    assert second.exit_code == 0
    assert second.summary.skipped_final == 40
    assert sum(sim.sim.stats.deletes.values()) == 40
    third = await run_ids(sim, tmp_path, ids[:5], options=RunOptions(force=True))
    assert third.exit_code == 0  # already_cancelled counts as success
    assert third.summary.outcomes["already_cancelled"] == 5


async def test_resume_keeps_the_earlier_verdict(sim: RunningSimulator, tmp_path: Path) -> None:
    """An input whose orders were rejected before still exits 1 on resume."""
    await run_ids(sim, tmp_path, ["SUB0000000001", "CDE0000000001"])
    again = await run_ids(sim, tmp_path, ["SUB0000000001", "CDE0000000001"])
    assert again.exit_code == 1
    assert again.summary.skipped_final == 2


async def test_requests_in_flight_never_exceed_concurrency(make_sim: Any, tmp_path: Path) -> None:
    """--concurrency bounds the requests in flight at the server, and is used in full."""
    running = await make_sim(latency_ms=20)
    ids = [f"CDE{n:010d}" for n in range(60)]
    report = await run_ids(running, tmp_path, ids, concurrency=4, rate=1000)
    assert report.summary.outcomes == {"cancelled": 60}
    assert running.sim.stats.max_in_flight == 4


@pytest.mark.parametrize(
    "fatal", ["USR0000000001", "ORG0000000001", "ACT0000000001", "FBD0000000001"]
)
async def test_fatal_answer_stops_the_run(make_sim: Any, tmp_path: Path, fatal: str) -> None:
    """A fatal answer aborts with exit 3 after at most `concurrency` more requests."""
    running = await make_sim(latency_ms=20)
    ids = [f"CDE{n:010d}" for n in range(1, 6)] + [fatal] + [f"CDE{n:010d}" for n in range(6, 300)]
    report = await run_ids(running, tmp_path, ids, concurrency=4, rate=1000)
    assert report.exit_code == 3
    assert fatal in (report.reason or "")
    rows = ledger_rows(tmp_path / "ledger.sqlite")
    assert rows[fatal]["outcome"] == "pending"
    fatal_at = next(t for t, order, _ in running.sim.stats.answers if order == fatal)
    later = [t for t in running.sim.stats.arrivals if t > fatal_at]
    assert len(later) <= 4
    assert {r["outcome"] for r in rows.values()} <= {"cancelled", "pending"}
    assert len(rows) == len(ids)  # every order of the input has a row


async def test_wrong_api_key_stops_after_a_request_or_two(
    sim: RunningSimulator, tmp_path: Path
) -> None:
    """A wrong API key: 401, one token refresh, 401 again, exit 3; everything stays pending."""
    ids = [f"CDE{n:010d}" for n in range(1, 200)]
    report = await run_ids(sim, tmp_path, ids, api_key="wrong-key", concurrency=16)
    assert report.exit_code == 3
    assert "401" in (report.reason or "")
    assert sim.sim.stats.statuses[401] <= 2
    assert sim.sim.stats.token_requests == 2
    rows = ledger_rows(tmp_path / "ledger.sqlite")
    assert {r["outcome"] for r in rows.values()} == {"pending"}


async def test_wrong_static_token(sim: RunningSimulator, tmp_path: Path) -> None:
    """A wrong ready-made token stops the run after one request."""
    report = await run_ids(
        sim, tmp_path, ["CDE0000000001", "CDE0000000002"], access_token="not-a-token"
    )
    assert report.exit_code == 3
    assert sim.sim.stats.statuses[401] == 1


async def test_wrong_client_secret_sends_nothing(sim: RunningSimulator, tmp_path: Path) -> None:
    """Refused client credentials stop the run before any DELETE."""
    report = await run_ids(sim, tmp_path, ["CDE0000000001"], client_secret="wrong")
    assert report.exit_code == 3
    assert sum(sim.sim.stats.deletes.values()) == 0


async def test_token_expires_mid_run(make_sim: Any, tmp_path: Path) -> None:
    """Tokens invalidated mid-run are refreshed once and the refused calls are repeated."""
    running = await make_sim(latency_ms=5)
    ids = [f"CDE{n:010d}" for n in range(1, 121)]

    async def expire() -> None:
        await running.sim.wait_for_deletes(40)
        running.sim.expire_tokens()

    expiring = asyncio.create_task(expire())
    report = await run_ids(running, tmp_path, ids, concurrency=8)
    await expiring
    assert report.exit_code == 0
    assert running.sim.stats.token_requests == 2
    rows = ledger_rows(tmp_path / "ledger.sqlite")
    assert {r["outcome"] for r in rows.values()} == {"cancelled"}


async def test_gateway_429_pauses_every_worker(make_sim: Any, tmp_path: Path) -> None:
    """With --rate above the gateway's limit, 429s pause everyone and all orders still end."""
    running = await make_sim(rate_limit=30, retry_after_s=1)
    ids = [f"CDE{n:010d}" for n in range(1, 101)]
    report = await run_ids(running, tmp_path, ids, rate=60, concurrency=8, max_attempts=10)
    assert report.exit_code == 0
    first_429 = next(t for t, _, status in running.sim.stats.answers if status == 429)
    paused = [t for t in running.sim.stats.arrivals if first_429 + 0.05 < t < first_429 + 0.95]
    assert paused == []


async def test_quota_longer_than_max_wait(make_sim: Any, tmp_path: Path) -> None:
    """A quota answer asking for more than --max-wait stops the run for a later resume."""
    running = await make_sim(quota_retry_after_s=600)
    report = await run_ids(running, tmp_path, ["QTA0000000001", "CDE0000000001"], max_wait=60)
    assert report.exit_code == 3
    assert "max_wait" in (report.reason or "")
    assert ledger_rows(tmp_path / "ledger.sqlite")["QTA0000000001"]["outcome"] == "pending"


async def test_dry_run_sends_nothing(sim: RunningSimulator, tmp_path: Path) -> None:
    """A dry run counts what would be sent, writes no ledger and sends nothing."""
    report = await run_ids(
        sim, tmp_path, ["CDE0000000001", "CDE0000000001", "nope"], options=RunOptions(dry_run=True)
    )
    assert report.exit_code == 1  # an invalid ID
    assert report.summary.sent_requests == 1
    assert report.summary.duplicates == 1
    assert sim.sim.stats.token_requests == 0
    assert sum(sim.sim.stats.deletes.values()) == 0
    assert not (tmp_path / "ledger.sqlite").exists()


async def test_retry_takes_only_retryable(sim: RunningSimulator, tmp_path: Path) -> None:
    """retry resends retryable_failed and pending orders only."""
    await run_ids(
        sim, tmp_path, ["ERR0000000000", "CDE0000000001", "SUB0000000001"], max_attempts=2
    )
    before = dict(sim.sim.stats.deletes)
    report = await run_ids(
        sim,
        tmp_path,
        [],
        source=LedgerSource(tmp_path / "ledger.sqlite", IdValidator(r"^[A-Z]{3}[0-9]{10}$")),
        options=RunOptions(command="retry"),
        max_attempts=2,
    )
    assert report.exit_code == 1
    sent = {k: v - before.get(k, 0) for k, v in sim.sim.stats.deletes.items()}
    assert {k for k, v in sent.items() if v} == {"ERR0000000000"}


async def test_interrupt_records_in_flight(make_sim: Any, tmp_path: Path) -> None:
    """A stop mid-run lets in-flight requests finish and be recorded; the rest stay pending."""
    running = await make_sim(latency_ms=100)
    ids = [f"CDE{n:010d}" for n in range(1, 201)]
    settings = settings_for(running, tmp_path / "ledger.sqlite", concurrency=8, rate=1000)
    source = CsvSource(write_ids(tmp_path / "in.csv", ids), IdValidator(settings.id_pattern))
    ledger = SqliteLedger(settings.ledger)
    runner = Runner(settings, source, ledger, RunOptions())

    async def stop() -> None:
        await running.sim.wait_for_deletes(20)
        runner.control.interrupt(143, "SIGTERM")

    stopper = asyncio.create_task(stop())
    report = await runner.execute()
    await stopper
    ledger.close()
    assert report.exit_code == 143
    rows = ledger_rows(tmp_path / "ledger.sqlite")
    assert len(rows) >= len(running.sim.cancelled)
    for order_id in running.sim.cancelled:  # every answer the server gave was recorded
        assert rows[order_id]["outcome"] == "cancelled"
    assert {r["outcome"] for r in rows.values()} <= {"cancelled", "pending"}
    assert "pending" in {r["outcome"] for r in rows.values()}


async def test_second_signal_skips_the_grace(make_sim: Any, tmp_path: Path) -> None:
    """A second signal cancels requests still in flight: they stay pending, the run ends."""
    running = await make_sim(stall_s=60)
    ids = [f"SLO{n:010d}" for n in range(1, 5)]  # every request stalls for a minute
    settings = settings_for(
        running, tmp_path / "ledger.sqlite", concurrency=4, timeout=60, grace=60
    )
    source = CsvSource(write_ids(tmp_path / "in.csv", ids), IdValidator(settings.id_pattern))
    ledger = SqliteLedger(settings.ledger)
    runner = Runner(settings, source, ledger, RunOptions())

    async def signals() -> None:
        await running.sim.wait_for_deletes(1)  # the probe is in flight
        runner.control.interrupt(130, "SIGINT")
        runner.control.interrupt(130, "SIGINT")

    sender = asyncio.create_task(signals())
    report = await asyncio.wait_for(runner.execute(), 30)
    await sender
    ledger.close()
    assert report.exit_code == 130
    rows = ledger_rows(tmp_path / "ledger.sqlite")
    assert {r["outcome"] for r in rows.values()} == {"pending"}
    assert rows["SLO0000000001"]["attempts"] == 1


async def test_ledger_failure_stops_the_run_without_silent_loss(
    sim: RunningSimulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When the ledger stops taking writes the run stops (exit 3) and every result it could not
    record is logged as `unrecorded_result`, so none is lost silently."""

    def broken(self: SqliteLedger, results: Any, run_id: str, attempts: Any = ()) -> None:
        raise LedgerError(f"{self.path}: cannot write the ledger: disk I/O error")

    monkeypatch.setattr(SqliteLedger, "record", broken)
    ids = [f"CDE{n:010d}" for n in range(1, 31)]
    with capture_logs() as logs:
        report = await run_ids(sim, tmp_path, ids)
    assert report.exit_code == 3
    assert "ledger write failed" in (report.reason or "")
    answered = {o for o, n in sim.sim.stats.deletes.items() if n}
    unrecorded = {e["order_id"] for e in logs if e["event"] == "unrecorded_result"}
    assert answered
    assert answered <= unrecorded


async def test_probe_ends_at_the_first_accepted_answer(
    sim: RunningSimulator, tmp_path: Path
) -> None:
    """Once an answer proves the credentials, the other orders go ahead without waiting for the
    probe order's retries."""
    ids = ["CFL0000000004"] + [f"CDE{n:010d}" for n in range(1, 21)]
    report = await run_ids(
        sim,
        tmp_path,
        ids,
        concurrency=8,
        rate=1000,
        max_attempts=6,
        backoff_base=0.5,
        backoff_cap=0.5,
    )
    assert report.exit_code == 0
    answers = sim.sim.stats.answers
    probe_done = max(t for t, order, _ in answers if order == "CFL0000000004")
    others_done = max(t for t, order, _ in answers if order.startswith("CDE"))
    assert others_done < probe_done


async def test_quota_that_keeps_coming_back_stops_the_run(make_sim: Any, tmp_path: Path) -> None:
    """Short quota waits in a row add up: past --max-wait the run stops for a later resume."""
    running = await make_sim(quota_retry_after_s=1)
    report = await run_ids(running, tmp_path, ["QTA0000000000", "CDE0000000001"], max_wait=2.5)
    assert report.exit_code == 3
    assert "max_wait" in (report.reason or "")
    assert 2 <= running.sim.stats.deletes["QTA0000000000"] <= 4


async def test_resume_asks_before_sending_again(sim: RunningSimulator, tmp_path: Path) -> None:
    """Orders an interrupted run left pending may have been cancelled by its last requests:
    each is looked up with GET first, and the ones the API shows cancelled are recorded
    without a second DELETE; the others are sent."""
    ids = [f"CDE{n:010d}" for n in range(1, 21)]
    earlier = SqliteLedger(tmp_path / "ledger.sqlite")
    earlier.claim([(i, None) for i in ids], "an-interrupted-run")
    earlier.close()
    for order_id in ids[:10]:  # the interrupted run's requests that reached the API
        sim.sim.cancelled.add(order_id)
        sim.sim.finalized.add(order_id)
    report = await run_ids(sim, tmp_path, ids)
    assert report.exit_code == 0
    assert set(sim.sim.stats.deletes) == set(ids[10:])
    assert sim.sim.stats.resent_final == 0
    rows = ledger_rows(tmp_path / "ledger.sqlite")
    for order_id in ids[:10]:
        assert rows[order_id]["outcome"] == "already_cancelled"
        assert "GET" in rows[order_id]["message"]
        assert rows[order_id]["attempts"] == 0
    assert {rows[i]["outcome"] for i in ids[10:]} == {"cancelled"}


async def test_first_runs_do_not_ask(sim: RunningSimulator, tmp_path: Path) -> None:
    """Orders never claimed before go straight to DELETE: no GET for them."""
    ids = [f"CDE{n:010d}" for n in range(1, 11)]
    report = await run_ids(sim, tmp_path, ids)
    assert report.exit_code == 0
    assert len(sim.sim.stats.arrivals) == 10


async def test_resume_sends_when_the_get_cannot_settle_it(
    sim: RunningSimulator, tmp_path: Path
) -> None:
    """Only the API's own word settles an order without a DELETE: an order the GET shows as a
    draft is sent; one it answers CUSTOMER_ORDER_NOT_FOUND is recorded not_found."""
    ids = ["CDE0000000001", "GON0000000001", "NFD0000000001"]
    earlier = SqliteLedger(tmp_path / "ledger.sqlite")
    earlier.claim([(i, None) for i in ids], "an-interrupted-run")
    earlier.close()
    report = await run_ids(sim, tmp_path, ids)
    assert report.exit_code == 1
    assert set(sim.sim.stats.deletes) == {"CDE0000000001"}
    rows = ledger_rows(tmp_path / "ledger.sqlite")
    assert rows["CDE0000000001"]["outcome"] == "cancelled"
    assert rows["NFD0000000001"]["outcome"] == "not_found"
    assert "GET" in rows["NFD0000000001"]["message"]
