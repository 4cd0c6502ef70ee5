"""Selection and preflight: filters, dates, paging that never skips an order while orders are
cancelled under it, only Master orders, the API's search errors, and `check` predicting what
`run` then does."""

from __future__ import annotations

import argparse
import asyncio
import csv
import io
import json
import random
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aioresponses import aioresponses
from structlog.testing import capture_logs

from tests.support import Cli, ledger_rows, settings_for, sim_env, write_ids
from worker.cli.filters import FILTER_DESTS, add_filter_arguments
from worker.cli.selecting import select_into
from worker.domain.errors import ConfigError, FatalApiError
from worker.settings import Settings
from worker.simulator import RunningSimulator
from worker.sources.selection import Filters, parse_age, parse_day

TODAY = datetime.now(UTC).date()


def expected(running: RunningSimulator, filters: Filters) -> set[str]:
    """The ground truth: the simulator's Master orders that match the filters."""
    found = set()
    for order in running.sim.book.orders.values():
        view = order.view()
        if view["type"] != "Master":
            continue
        if filters.statuses and view["status"] not in filters.statuses:
            continue
        if filters.created_after and order.created < filters.created_after:
            continue
        if filters.created_before and order.created >= filters.created_before:
            continue
        if filters.processing_indicator and order.indicator != filters.processing_indicator:
            continue
        if filters.carrier_code and order.carrier != filters.carrier_code:
            continue
        found.add(order.order_id)
    return found


async def select_ids(settings: Settings, filters: Filters) -> list[str]:
    """Run a selection into memory; the IDs in the order written."""
    out = io.StringIO()
    await select_into(settings, filters, out, progress_bar=False)
    lines = out.getvalue().splitlines()
    assert lines[0] == "orderId"
    return lines[1:]


def test_dates_are_utc_days() -> None:
    """--created-after includes its day, --created-before excludes it (endDate is the day
    before), --older-than 30d is before today minus 30 days."""
    filters = Filters(created_after=date(2026, 1, 10), created_before=date(2026, 2, 1))
    assert filters.queries() == [{"startDate": "2026-01-10", "endDate": "2026-01-31"}]
    assert parse_age("30d", date(2026, 3, 31)) == date(2026, 3, 1)
    assert parse_age("7", date(2026, 3, 31)) == date(2026, 3, 24)
    with pytest.raises(ConfigError, match="--older-than"):
        parse_age("a month", TODAY)
    with pytest.raises(ConfigError, match="--created-after '2026-02-30'"):
        parse_day("2026-02-30", "--created-after")


def test_one_query_per_status() -> None:
    """The API takes one status: several --status make several walks."""
    filters = Filters(statuses=("Draft", "Valid", "Draft"), carrier_code="MSC")
    assert filters.queries() == [
        {"carrierCode": "MSC", "status": "Draft"},
        {"carrierCode": "MSC", "status": "Valid"},
    ]


@pytest.mark.parametrize(
    "filters",
    [
        Filters(),
        Filters(statuses=("Draft",)),
        Filters(statuses=("Draft", "Valid"), created_before=TODAY - timedelta(days=30)),
        Filters(
            created_after=TODAY - timedelta(days=60), created_before=TODAY - timedelta(days=10)
        ),
        Filters(statuses=("Valid",), processing_indicator="Import", carrier_code="MSC"),
        Filters(statuses=("Cancelled",)),
    ],
)
async def test_selection_is_exactly_the_matching_master_orders(
    make_sim: Any, tmp_path: Path, filters: Filters
) -> None:
    """Filters combined: exactly the matching Master orders, each once, the others counted."""
    running = await make_sim(orders=700, seed=11)
    settings = settings_for(running, tmp_path / "l.sqlite")
    with capture_logs() as logs:
        ids = await select_ids(settings, filters)
    assert len(ids) == len(set(ids))
    assert set(ids) == expected(running, filters)
    summary = next(e for e in logs if e["event"] == "selection_summary")
    assert summary["matched"] == len(ids)
    if not filters.statuses and not filters.created_after:
        assert sum(summary["not_master"].values()) > 0


async def test_paging_while_orders_are_cancelled(make_sim: Any, tmp_path: Path) -> None:
    """While another client cancels Draft orders (which leave a status=Draft filter and shift
    the offsets), no Draft order that stayed Draft is skipped; total changes are logged."""
    running = await make_sim(orders=2000, seed=5, latency_ms=3)
    settings = settings_for(running, tmp_path / "l.sqlite", rate=1000)
    filters = Filters(statuses=("Draft",))
    drafts = sorted(expected(running, filters))
    assert len(drafts) > 500
    victims = random.Random(3).sample(drafts, 300)
    stop = asyncio.Event()

    async def cancel_under_it() -> None:
        for order_id in victims:
            if stop.is_set():
                return
            running.sim.book.cancel(order_id)
            await asyncio.sleep(0.0005)

    cancelling = asyncio.create_task(cancel_under_it())
    with capture_logs() as logs:
        ids = await select_ids(settings, filters)
    stop.set()
    await cancelling
    still_draft = {i for i in drafts if running.sim.book.orders[i].status == "Draft"}
    assert still_draft <= set(ids)  # never skipped
    assert set(ids) <= set(drafts)  # nothing that never matched
    assert len(ids) == len(set(ids))
    changes = [e for e in logs if e["event"] == "selection_total_changed"]
    assert changes, "the cancellations did not overlap the paging: the test proves nothing"


@pytest.mark.parametrize("code", ["LIMIT_NONPOSITIVE", "OFFSET_NEGATIVE", "SEARCH_DATE_ERROR"])
async def test_search_errors_stop_the_selection(tmp_path: Path, code: str) -> None:
    """The API's search errors stop the selection with the code named; nothing is cancelled."""
    settings = Settings(
        base_url="https://api.example.test/v1",
        token_url="https://api.example.test/token",
        access_token="t",
        api_key="k",
        ledger=tmp_path / "l.sqlite",
        rate=100,
        concurrency=2,
        max_attempts=2,
        timeout=5,
        max_wait=10,
        id_pattern=".+",
        log_level="info",
        backoff_base=0.01,
        backoff_cap=0.02,
        grace=1,
        progress_interval=10,
        outage_timeout=10,
        min_orders=1,
    )
    body = {"timestamp": "2026-01-01T00:00:00Z", "code": code, "message": "bad search"}
    with aioresponses() as mocked:
        mocked.get(
            "https://api.example.test/v1/customer-orders?limit=50&offset=0",
            status=400,
            payload=body,
        )
        with pytest.raises(FatalApiError, match=code):
            await select_ids(settings, Filters())


async def test_check_predicts_what_run_does(cli: Cli, make_sim: Any, tmp_path: Path) -> None:
    """`check` sends no DELETE, and its prediction for every order is what `run` then
    records: seeded orders of every type and status, and every behaviour prefix."""
    running = await make_sim(orders=400, seed=9)
    seeded = sorted(running.sim.book.orders)
    named = ["CDE0000000001", "ALR0000000001", "NFD0000000001", "NOF0000000001",
             "NMO0000000001", "SUB0000000001", "DLV0000000001", "bad-id"]  # fmt: skip
    src = write_ids(tmp_path / "o.csv", seeded + named)
    ledger = tmp_path / "l.sqlite"
    env = sim_env(running, ledger, MOUVONE_RATE="2000")
    checked = await cli.run("check", str(src), "--format", "csv", env=env)
    assert checked.code == 1, checked.stderr
    assert checked.stderr.strip().splitlines()[-1].startswith("cancel-orders: checked;")
    assert sum(running.sim.stats.deletes.values()) == 0
    assert not ledger.exists()
    predicted = {r["order_id"]: r["outcome"] for r in csv.DictReader(io.StringIO(checked.stdout))}
    assert set(predicted) == set(seeded + named)
    assert len(set(predicted.values())) >= 5

    done = await cli.run("run", str(src), "--yes", env=env)
    assert done.code == 1, done.stderr
    actual = {k: r["outcome"] for k, r in ledger_rows(ledger).items()}
    assert actual == predicted


async def test_run_select_cancels_exactly_the_selection(
    cli: Cli, make_sim: Any, tmp_path: Path
) -> None:
    """The scheduled cleanup recipe in one command; a second run finds nothing left."""
    running = await make_sim(orders=500, seed=2)
    filters = Filters(statuses=("Draft",), created_before=TODAY - timedelta(days=30))
    wanted = expected(running, filters)
    ledger = tmp_path / "l.sqlite"
    env = sim_env(running, ledger)
    args = ["run", "--select", "--status", "Draft", "--older-than", "30d", "--yes"]
    done = await cli.run(*args, env=env)
    assert done.code == 0, done.stderr
    assert set(running.sim.stats.deletes) == wanted
    assert f"Selected {len(wanted)} Master orders" in done.stderr
    again = await cli.run(*args, env=env)
    assert again.code == 0
    assert "Selected 0 Master orders" in again.stderr
    summary = json.loads(
        next(line for line in again.stderr.splitlines() if '"run_summary"' in line)
    )
    assert summary["orders_read"] == 0


async def test_select_writes_a_csv_file(cli: Cli, make_sim: Any, tmp_path: Path) -> None:
    """`select --output FILE` writes the IDs under an orderId header, which `run` reads."""
    running = await make_sim(orders=120, seed=4)
    out = tmp_path / "selection.csv"
    done = await cli.run(
        "select", "--status", "Valid", "--output", str(out),
        env=sim_env(running, tmp_path / "l.sqlite"),
    )  # fmt: skip
    assert done.code == 0, done.stderr
    lines = out.read_text().splitlines()
    assert lines[0] == "orderId"
    assert set(lines[1:]) == expected(running, Filters(statuses=("Valid",)))
    assert sum(running.sim.stats.deletes.values()) == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run", "--yes"], "INPUT is missing"),
        (["run", "o.csv", "--status", "Draft", "--yes"], "selection filters need --select"),
        (["run", "o.csv", "--select", "--yes"], "either INPUT or --select"),
        (["select", "--created-before", "2026-13-01"], "expected a day as YYYY-MM-DD"),
        (["select", "--created-after", "2026-02-01", "--created-before", "2026-01-01"], "before"),
    ],
)
async def test_selection_usage_errors(
    cli: Cli, sim: RunningSimulator, tmp_path: Path, args: list[str], message: str
) -> None:
    """Bad selection usage: one line, exit 2, nothing requested."""
    write_ids(tmp_path / "o.csv", ["CDE0000000001"])
    done = await cli.run(*args, env=sim_env(sim, tmp_path / "l.sqlite"))
    assert done.code == 2
    assert message in done.stderr
    assert not sim.sim.stats.arrivals


def test_the_filter_flags_are_declared_once() -> None:
    """The selection's flags are exactly FILTER_DESTS, the list every command checks."""
    parser = argparse.ArgumentParser()
    before = {a.dest for a in parser._actions}
    add_filter_arguments(parser)
    assert {a.dest for a in parser._actions} - before == set(FILTER_DESTS)


async def test_check_is_a_run_with_the_runs_brakes(cli: Cli, make_sim: Any, tmp_path: Path) -> None:
    """`check` runs the same lifecycle as `run`: a stop file ends it as it ends a run (exit 4,
    the reason said), before it has looked at every order; nothing is cancelled or recorded."""
    running = await make_sim(orders=200, seed=3)
    seeded = sorted(running.sim.book.orders)
    src = write_ids(tmp_path / "o.csv", seeded)
    ledger = tmp_path / "l.sqlite"
    stop = tmp_path / "stop"
    stop.touch()
    env = sim_env(running, ledger, MOUVONE_RATE="20")
    checked = await cli.run("check", str(src), "--stop-file", str(stop), env=env)
    assert checked.code == 4, checked.stderr
    assert f"the stop file {stop} exists" in checked.stderr.strip().splitlines()[-1]
    assert sum(running.sim.stats.gets.values()) < len(seeded)
    assert sum(running.sim.stats.deletes.values()) == 0
    assert not ledger.exists()


async def test_check_tells_a_person_what_it_predicted_and_how_it_ended(
    cli: Cli, make_sim: Any, tmp_path: Path
) -> None:
    """`check`'s table keeps its counts in one column whatever the predicted outcome's words
    ("would be retryable_failed" is longer than the plain outcomes), and its summary event
    ends as a check ends: orders that would not be cancelled, with no ledger to report on;
    a stopped check recorded nothing, so nothing "stays pending" and nothing is resumed."""
    running = await make_sim()
    src = write_ids(tmp_path / "o.csv", ["CDE0000000001", "NFD0000000001", "ERR0000000001"])
    env = sim_env(running, tmp_path / "l.sqlite", MOUVONE_MAX_ATTEMPTS="2")
    checked = await cli.run("check", str(src), env=env)
    assert checked.code == 1, checked.stderr[-2000:]
    rows = [line for line in checked.stdout.splitlines() if line.startswith("would ")]
    assert len(rows) == 8, checked.stdout
    assert len({len(line) for line in rows}) == 1, checked.stdout  # one column of counts
    assert "would be retryable_failed" in checked.stdout
    events = [json.loads(line) for line in checked.stderr.splitlines() if line.startswith("{")]
    ended = [e for e in events if e["event"] == "check_summary"]
    assert [e["ending"] for e in ended] == [
        "checked; some orders would not be cancelled (the report)"
    ]

    stop = tmp_path / "stop"
    stop.touch()
    stopped = await cli.run("check", str(src), "--stop-file", str(stop), env=env)
    assert stopped.code == 4, stopped.stderr[-2000:]
    events = [json.loads(line) for line in stopped.stderr.splitlines() if line.startswith("{")]
    (ending,) = [e["ending"] for e in events if e["event"] == "check_summary"]
    assert ending.endswith("; nothing was recorded: the same command checks every order again")
    assert "pending" not in ending
    assert "resume" not in ending


async def test_plan_check_shows_its_progress(cli: Cli, make_sim: Any, tmp_path: Path) -> None:
    """`plan --check` looks every order up at --rate and says how far it is, as a run does
    (progress events off a terminal, with the count to do)."""
    running = await make_sim(orders=40, seed=4)
    src = write_ids(tmp_path / "o.csv", sorted(running.sim.book.orders))
    env = sim_env(
        running, tmp_path / "l.sqlite", MOUVONE_RATE="40", MOUVONE_PROGRESS_INTERVAL="0.2"
    )
    planned = await cli.run(
        "plan", str(src), "--output", str(tmp_path / "p.json"), "--check", env=env
    )
    assert planned.code == 0, planned.stderr[-2000:]
    events = [json.loads(line) for line in planned.stderr.splitlines() if line.startswith("{")]
    progress = [e for e in events if e["event"] == "progress"]
    assert progress
    assert progress[-1]["total"] == 40
