"""The PostgreSQL ledger, through the CLI against the simulator and the machine's real
PostgreSQL (each test in a schema of its own): every command answers as it does on a SQLite
file; several runs share one ledger, a killed one's orders go to the others after its lease; a
connection cut mid-run loses nothing; consumers record there; the schema is versioned."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import time
from collections import Counter
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import psycopg
import pytest
from psycopg_pool import PoolTimeout

from tests.support import (
    PG_URL,
    Cli,
    Queue,
    TcpRelay,
    accounted,
    cut_database,
    ids,
    ledger_rows,
    sim_env,
    table_rows,
    write_ids,
)
from worker.domain.errors import LedgerError
from worker.domain.location import PostgresUrl
from worker.domain.models import Outcome, Result
from worker.ledger import SCHEMA_VERSION, ledger_at, postgres
from worker.ledger.postgres import GONE_WAIT_S, TRIES, PgDb
from worker.simulator import RunningSimulator

MIXED = [*ids("CDE", 3), "NFD0000000001", "SUB0000000001", "TMP0000000002", "bad id!"]
MIXED.append("CDE0000000001")  # a duplicate


def _normal(text: str, sim: RunningSimulator, ledger: str, tmp: Path) -> list[str]:
    """Output with what differs between two runs by nature (times, ids, ports, the ledger's
    name, durations, a plan's digest, the report's charts over time) replaced; its lines
    sorted."""
    text = text.replace(sim.base_url, "<base>").replace(sim.token_url, "<token>")
    text = text.replace(ledger, "<ledger>").replace(str(tmp), "<tmp>")
    for pattern, token in (
        (r"postgresql://[^\s\"',<]+", "<ledger>"),
        (r"[^\s\"',]*l\.sqlite", "<ledger>"),
        (r"\d{8}T\d{6}Z-[0-9a-f]{6}", "<run>"),
        (r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z?", "<time>"),
        (r"\d\d:\d\d:\d\d", "<clock>"),
        (r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", "<uuid>"),
        (r"\b[0-9a-f]{32}\b", "<trace>"),  # a request's trace id
        (r"\d+\.\d+", "<n>"),
        (r"127\.0\.0\.1:\d+", "<host>"),
        (r'"(host|operator)": "[^"]*"', r'"\1": "<who>"'),
        (r"sha256[^,}]*", "<sha>"),
        (r"(digest |\"plan\": ?\")[0-9a-f]{12,64}", r"\1<digest>"),  # it covers the target too
        # the report's charts have a point per second of the run: one or two, as it took
        (r'<div id="timeline".*?</figure></div>', '<div id="timeline"><charts></div>'),
    ):
        text = re.sub(pattern, token, text)
    return sorted(text.splitlines())


async def _session(cli: Cli, sim: RunningSimulator, tmp: Path, ledger: str) -> dict[str, Any]:
    """Every command that takes a ledger (and `select`, which reads only the API), in turn;
    each one's exit status and output."""
    tmp.mkdir()
    src = write_ids(tmp / "in.csv", MIXED)
    env = sim_env(sim, ledger, MOUVONE_CONCURRENCY="1", MOUVONE_MAX_ATTEMPTS="1")
    seen: dict[str, Any] = {}

    async def step(name: str, *args: str) -> None:
        done = await cli.run(*args, env=env)
        seen[name] = (done.code, _normal(done.stdout + done.stderr, sim, ledger, tmp))

    await step("run", "run", str(src), "--yes", "--operator", "ops", "--reason", "r")
    await step("dry", "run", str(src), "--dry-run")
    for fmt in ("table", "json", "csv", "html"):
        await step(f"report {fmt}", "report", "--format", fmt)
    await step("runs", "runs", "--format", "json")
    await step("runs table", "runs")
    await step("history", "history", "TMP0000000002", "--format", "json")
    await step("audit", "audit", "--format", "csv")
    await step("retry", "retry", "--yes")
    await step("check", "check", str(src))
    await step("select", "select", "--status", "Draft")
    await step("plan", "plan", str(src), "--output", str(tmp / "plan.json"))
    await step("apply", "apply", str(tmp / "plan.json"), "--yes")
    await step("after", "report", "--format", "json")
    await step("prune", "prune", "--older-than", "0s")
    await step("control", "control", "status")
    return seen


@pytest.mark.timeout(360)  # two sessions of seventeen commands, a process each: slow when busy
async def test_every_command_answers_as_on_a_file(
    cli: Cli, make_sim: Any, tmp_path: Path, pg_url: str
) -> None:
    """The same commands on the same orders (one request at a time, so that both simulators
    see the same sequence), on a SQLite file and on PostgreSQL: the same exit statuses and
    the same outputs, once times, ids and names are set aside."""
    on_file, on_pg = await asyncio.gather(  # side by side: each is a minute on a busy machine
        _session(cli, await make_sim(), tmp_path / "a", str(tmp_path / "l.sqlite")),
        _session(cli, await make_sim(), tmp_path / "b", pg_url),
    )
    assert on_file["run"][0] == 1
    assert on_file["retry"][0] == 1
    assert '  "outcomes": {' in on_file["report json"][1]  # the normal form still says things
    assert on_file["select"][0] == 0
    assert len(on_file["select"][1]) > 2  # a header and orders
    for name, (code, lines) in on_file.items():
        assert on_pg[name][0] == code, name
        assert on_pg[name][1] == lines, name


async def _run(cli: Cli, spawned: list[Any], src: Path, env: dict[str, str], *flags: str) -> Any:
    """`run SRC --yes` started (killed at the test's end if still running)."""
    proc = await cli.start("run", str(src), "--yes", *flags, env=env)
    spawned.append(proc)
    return proc


async def _both_begun(cli: Cli, env: dict[str, str]) -> None:
    """Until `control status` lists two runs living on the ledger."""
    status = ""
    for _ in range(400):
        status = (await cli.run("control", "status", env=env)).stdout
        if status.startswith("2 runs on"):
            return
    raise AssertionError(status)


def _deletes(sim: RunningSimulator) -> Counter[str]:
    return Counter(order for method, order, _, _ in sim.sim.stats.journal if method == "DELETE")


async def _progress(pg_url: str, at_least: int) -> None:
    """Until the ledger holds ``at_least`` answered orders (polled on the ledger's state)."""
    for _ in range(600):
        try:
            rows = table_rows(pg_url, "SELECT count(*) AS n FROM orders WHERE outcome <> 'pending'")
        except psycopg.errors.UndefinedTable:  # the run has not created the ledger yet
            rows = []
        if rows and rows[0]["n"] >= at_least:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"fewer than {at_least} orders answered")


async def _both_hold(pg_url: str) -> None:
    """Until two runs each hold (have claimed, unanswered) orders of the ledger."""
    for _ in range(600):
        rows = table_rows(
            pg_url, "SELECT count(DISTINCT run_id) AS n FROM orders WHERE outcome = 'pending'"
        )
        if rows[0]["n"] >= 2:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the second run claimed no order")


async def test_two_hosts_share_one_input_and_ledger(
    cli: Cli, make_sim: Any, tmp_path: Path, pg_url: str, spawned: list[Any]
) -> None:
    """Two `run` processes on the same input and ledger at once: every order sent exactly once
    (the simulator's journal), both contribute, both exit 0; `control` pauses and shows both."""
    sim = await make_sim(latency_ms=5)
    wanted = ids("CDE", 600)
    src = write_ids(tmp_path / "in.csv", wanted)
    env = sim_env(sim, pg_url, MOUVONE_RATE="150")
    first = await _run(cli, spawned, src, env)
    await _progress(pg_url, 10)
    # The DELETEs kept unanswered from the moment the first has answered 10 until both runs are
    # paused: the first holds only the orders it had claimed, and neither run can end before the
    # resume below, however slowly this machine starts the second.
    sim.sim.hold()
    assert (await cli.run("control", "pause", env=env)).code == 0
    second = await _run(cli, spawned, src, env)
    await _both_begun(cli, env)
    await _both_hold(pg_url)  # the second claimed orders of its own
    paused = await cli.run("control", "pause", env=env)  # the second (a pause is a run's own)
    assert paused.code == 0, paused.stderr
    status = ""
    for _ in range(200):  # until both have taken the pause and published it
        status = (await cli.run("control", "status", env=env)).stdout
        if status.count("paused (control),") == 2:
            break
        await asyncio.sleep(0.05)
    assert status.startswith("2 runs on"), status
    assert status.count("paused (control),") == 2, status
    sim.sim.release()
    assert (await cli.run("control", "resume", env=env)).code == 0
    outs = [await asyncio.wait_for(p.communicate(), 60) for p in (first, second)]
    assert [first.returncode, second.returncode] == [0, 0], [o[1][-1500:] for o in outs]
    deletes = _deletes(sim)
    assert set(deletes) == set(wanted)
    assert set(deletes.values()) == {1}
    rows = ledger_rows(pg_url)
    assert {r["outcome"] for r in rows.values()} == {"cancelled"}
    runs = table_rows(pg_url, "SELECT summary FROM runs")
    sent = [json.loads(r["summary"])["requests"] for r in runs]
    assert sum(sent) == len(wanted)
    assert min(sent) > 0, sent


async def test_an_order_a_peer_failed_is_left_to_the_next_run(
    cli: Cli, make_sim: Any, tmp_path: Path, pg_url: str, spawned: list[Any]
) -> None:
    """Two hosts given the same input at once: an order that always fails gets its attempts
    once, from the run that holds it; the other run, begun before it ended, leaves it to the
    next run (it says so, and exits 1: not every order of its input was cancelled). The same
    command afterwards, a run begun after the failure, retries it."""
    sim = await make_sim()
    wanted = ["ERR0000000001", *ids("CDE", 3)]
    src = write_ids(tmp_path / "in.csv", wanted)
    env = sim_env(sim, pg_url, MOUVONE_MAX_ATTEMPTS="3", MOUVONE_CLAIM_IDLE="2")
    sim.sim.hold()
    first = await _run(cli, spawned, src, env)
    await sim.sim.wait_for_held(1)  # it holds the whole input, its first DELETE unanswered
    told = tmp_path / "second.json"
    second = await _run(cli, spawned, src, env, "--on-finish", f"cat > {told}")
    await _both_begun(cli, env)
    sim.sim.release()
    outs = [await asyncio.wait_for(p.communicate(), 60) for p in (first, second)]
    assert [first.returncode, second.returncode] == [1, 1], [o[1][-1500:] for o in outs]
    assert _deletes(sim) == Counter({"ERR0000000001": 3, **dict.fromkeys(wanted[1:], 1)})
    said = outs[1][0].decode()
    assert re.search(r"failed in another run +1 +\(retryable_failed since this run began", said)
    notified = json.loads(told.read_text())  # the notification says so too
    assert notified["failed_elsewhere"] == 1
    assert "1 failed in another run (left to the next run)" in notified["text"]
    assert ledger_rows(pg_url)["ERR0000000001"]["outcome"] == "retryable_failed"
    again = await cli.run("run", str(src), "--yes", env=env)
    assert again.code == 1, again.stderr[-1500:]
    assert _deletes(sim)["ERR0000000001"] == 6
    assert "failed in another run" not in again.stdout


def test_a_claim_leaves_what_a_peer_failed_since_it_began(pg_url: str) -> None:
    """A claim takes an order another run ended `retryable_failed` before this run began (the
    resume of a failed run), leaves one it ended after (`failed_elsewhere`: its attempts were
    spent, by the same job), unless forced; an order pending under the live peer stays held."""
    a, b, c = "ABC0000000001", "ABC0000000002", "ABC0000000003"
    ledger = ledger_at(PostgresUrl(pg_url))
    try:
        ledger.begin_run("peer", "run", "http://127.0.0.1:1")
        ledger.claim([(a, None), (b, None), (c, None)], "peer")
        failed = [Result(o, Outcome.RETRYABLE_FAILED, 500, "HTTP_500", None, 3) for o in (a, b)]
        ledger.record(failed, "peer")
        ledger.begin_run("me", "run", "http://127.0.0.1:1")
        with psycopg.connect(pg_url, autocommit=True) as conn:  # the order of events, by clock
            conn.execute("UPDATE orders SET updated_at = '2026-12-01T02:00:01.000Z' WHERE "
                         "order_id = %s", (a,))  # fmt: skip
            conn.execute("UPDATE orders SET updated_at = '2026-12-01T02:00:03.000Z' WHERE "
                         "order_id = %s", (b,))  # fmt: skip
            conn.execute("UPDATE runs SET started_at = '2026-12-01T02:00:02.000Z' WHERE "
                         "run_id = 'me'")  # fmt: skip
        plan = ledger.claim([(a, None), (b, None), (c, None)], "me")
        assert (plan.to_send, plan.failed_elsewhere, plan.held) == ([a], [b], [c])
        forced = ledger.claim([(b, None)], "me", force=True)
        assert (forced.to_send, forced.failed_elsewhere) == ([b], [])
    finally:
        ledger.close()


def test_an_order_an_earlier_run_left_is_held_by_the_live_run_that_took_it(pg_url: str) -> None:
    """Two live runs resume the same input: an order an earlier run left `retryable_failed`
    goes to the first to claim it, marked `pending` under it (its last answer kept), and the
    second finds it held. (It kept its outcome, and the second took it too or called it failed
    in another run: both runs sent it, twice the attempts, when they began together.)"""
    a = "ABC0000000001"
    ledger = ledger_at(PostgresUrl(pg_url))
    try:
        ledger.begin_run("earlier", "run", "http://127.0.0.1:1")
        ledger.claim([(a, None)], "earlier")
        ledger.record([Result(a, Outcome.RETRYABLE_FAILED, 500, "HTTP_500", None, 3)], "earlier")
        ledger.begin_run("first", "run", "http://127.0.0.1:1")
        ledger.begin_run("second", "run", "http://127.0.0.1:1")
        assert ledger.claim([(a, None)], "first").to_send == [a]
        row = ledger_rows(pg_url)[a]
        assert (row["outcome"], row["error_code"], row["run_id"]) == (
            "pending",
            "HTTP_500",
            "first",
        )
        plan = ledger.claim([(a, None)], "second")
        assert (plan.to_send, plan.held, plan.failed_elsewhere) == ([], [a], [])
    finally:
        ledger.close()


async def test_a_lease_is_judged_by_its_holders_term(
    cli: Cli, make_sim: Any, tmp_path: Path, pg_url: str, spawned: list[Any]
) -> None:
    """A run with `--claim-idle 30` holds the input, its DELETEs unanswered; a second run with
    `--claim-idle 1`, given the same input and one order more, started once the first's last
    renewal is older than 1 s, leaves the first's orders to it (the lease has its holder's
    term) and finds them final when it asks again: no order gets two DELETEs, both exit 0.
    `control status` with a far shorter term of its own still finds the first run alive."""
    sim = await make_sim()
    wanted = ids("CDE", 40)
    extra = "CDE0000000041"
    env = sim_env(sim, pg_url, MOUVONE_RATE="50", MOUVONE_CONCURRENCY="2")
    sim.sim.hold()
    src = write_ids(tmp_path / "in.csv", wanted)
    first = await _run(cli, spawned, src, env, "--claim-idle", "30")
    await sim.sim.wait_for_held(1)  # its first request (until answered, the only one)
    for _ in range(200):  # until the first's last renewal is older than the second's term
        (row,) = table_rows(pg_url, "SELECT extract(epoch FROM now() - heartbeat_at) AS age "
                                    "FROM runs WHERE finished_at IS NULL")  # fmt: skip
        if row["age"] > 1.2:
            break
        await asyncio.sleep(0.05)
    status = await cli.run("control", "status", "--claim-idle", "0.5", env=env)
    assert status.stdout.startswith("1 run on "), status.stdout + status.stderr
    more = write_ids(tmp_path / "more.csv", [*wanted, extra])
    second = await _run(cli, spawned, more, env, "--claim-idle", "1")
    await sim.sim.wait_for_held(2)  # the second has claimed: its own order is on the wire
    sim.sim.release()
    outs = [await asyncio.wait_for(p.communicate(), 60) for p in (first, second)]
    assert [first.returncode, second.returncode] == [0, 0], [o[1][-1500:] for o in outs]
    deletes = _deletes(sim)
    assert set(deletes) == {*wanted, extra}
    assert set(deletes.values()) == {1}


async def test_a_ledger_of_version_3_gets_the_lease_term(
    cli: Cli, sim: RunningSimulator, tmp_path: Path, pg_url: str
) -> None:
    """A PostgreSQL ledger made by an earlier version (schema 3: no lease term; before 6: the
    attempt log's request ids unique on their own; before 7: an index of the orders' outcomes,
    their pages filled whole) is brought to this one by the next run that opens it, its rows
    kept; runs record their term; the attempt log has one index beside its key, (order, request
    id) unique; the orders only their key, their pages half filled."""
    env = sim_env(sim, pg_url)
    src = write_ids(tmp_path / "in.csv", ids("CDE", 2))
    assert (await cli.run("run", str(src), "--yes", env=env)).code == 0
    with psycopg.connect(pg_url, autocommit=True) as admin:
        admin.execute("ALTER TABLE runs DROP COLUMN lease_s")
        admin.execute("DROP INDEX attempts_by_order")
        admin.execute("CREATE INDEX attempts_by_order ON attempts (order_id)")
        admin.execute(
            "ALTER TABLE attempts ADD CONSTRAINT attempts_request_id_key UNIQUE (request_id)"
        )
        admin.execute("CREATE INDEX orders_by_outcome ON orders (outcome, order_id)")
        admin.execute("ALTER TABLE orders RESET (fillfactor)")
        admin.execute("UPDATE ledger_schema SET version = 3")
    more = write_ids(tmp_path / "more.csv", ids("CDE", 3))
    done = await cli.run("run", str(more), "--yes", "--claim-idle", "7", env=env)
    assert done.code == 0, done.stderr[-2000:]
    assert table_rows(pg_url, "SELECT version FROM ledger_schema") == [{"version": SCHEMA_VERSION}]
    terms = table_rows(pg_url, "SELECT lease_s FROM runs ORDER BY started_at")
    assert [t["lease_s"] for t in terms] == [None, 7.0]
    assert len(ledger_rows(pg_url)) == 3
    indexes = table_rows(pg_url, "SELECT indexname, indexdef FROM pg_indexes "
                         "WHERE tablename = 'attempts' AND schemaname = current_schema() "
                         "ORDER BY indexname")  # fmt: skip
    assert [i["indexname"] for i in indexes] == ["attempts_by_order", "attempts_pkey"]
    assert "UNIQUE INDEX attempts_by_order" in indexes[0]["indexdef"]
    assert "(order_id, request_id)" in indexes[0]["indexdef"]
    assert len(table_rows(pg_url, "SELECT request_id FROM attempts")) == 3
    assert _orders_storage(pg_url) == (["orders_pkey"], ["fillfactor=50"])


def _orders_storage(pg_url: str) -> tuple[list[str], list[str]]:
    """The orders table's indexes, and its storage options."""
    indexes = table_rows(pg_url, "SELECT indexname FROM pg_indexes WHERE tablename = 'orders' "
                         "AND schemaname = current_schema() ORDER BY indexname")  # fmt: skip
    options = table_rows(pg_url, "SELECT reloptions FROM pg_class "
                         "WHERE oid = 'orders'::regclass")  # fmt: skip
    return [i["indexname"] for i in indexes], options[0]["reloptions"] or []


async def test_results_rewrite_their_orders_in_place(
    cli: Cli, sim: RunningSimulator, tmp_path: Path, pg_url: str
) -> None:
    """A new ledger's orders have only their key and half-filled pages, so that a result
    rewrites its order's row on its own page without an index entry (PostgreSQL's heap-only
    update: the server's work per order at 0 ms 4 to 5 µs less); what reads orders by outcome
    still finds them: `report --outcome`, and `retry`'s candidates page by page."""
    env = sim_env(sim, pg_url)
    wanted = ids("HOT", 300)
    failing = [f"TMP{i:09d}9" for i in range(3)]  # 503 every time: retryable_failed
    src = write_ids(tmp_path / "in.csv", [*wanted, *failing])
    first = await cli.run("run", str(src), "--yes", "--max-attempts", "1", env=env)
    assert first.code == 1, first.stderr[-2000:]
    assert _orders_storage(pg_url) == (["orders_pkey"], ["fillfactor=50"])
    with psycopg.connect(pg_url, autocommit=True) as db:
        deadline = asyncio.get_running_loop().time() + 20
        while True:  # the statistics arrive as the run's connections end
            db.execute("SELECT pg_stat_clear_snapshot()")
            updated, hot = db.execute(
                "SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables "
                "WHERE relid = 'orders'::regclass"
            ).fetchone()
            if (
                updated >= len(wanted) + len(failing)
                or asyncio.get_running_loop().time() > deadline
            ):
                break
            await asyncio.sleep(0.05)  # polling an outside counter, bounded by the deadline
    assert updated >= len(wanted) + len(failing)
    assert hot >= 0.9 * updated, (updated, hot)
    report = await cli.run("report", "--outcome", "retryable_failed", "--format", "csv", env=env)
    assert report.code == 0, report.stderr
    assert sorted(line.split(",")[0] for line in report.stdout.splitlines()[1:]) == failing
    retried = await cli.run("retry", "--yes", "--max-attempts", "1", env=env)
    assert retried.code == 1, retried.stderr[-2000:]
    assert _deletes(sim)[failing[0]] == 2
    assert all(_deletes(sim)[o] == 1 for o in wanted)


async def test_a_killed_host_leaves_its_orders_after_the_lease(
    cli: Cli, make_sim: Any, tmp_path: Path, pg_url: str, spawned: list[Any]
) -> None:
    """kill -9 of one of two runs mid-run: the other takes its orders once its lease is older
    than --claim-idle, looks up those it may have sent, and finishes the input; no order gets
    two DELETEs."""
    sim = await make_sim(latency_ms=5)
    wanted = ids("CDE", 500)
    src = write_ids(tmp_path / "in.csv", wanted)
    env = sim_env(sim, pg_url, MOUVONE_RATE="100", MOUVONE_CLAIM_IDLE="1.5")
    doomed = await _run(cli, spawned, src, env)
    await _progress(pg_url, 20)
    # Its DELETEs kept unanswered from here: it cannot end before the kill, however slowly this
    # machine starts the other, and it dies with requests on the wire (answered after its death,
    # as a gateway does: the other must look them up, not send them again).
    sim.sim.hold()
    other = await _run(cli, spawned, src, env)
    await _both_begun(cli, env)  # else it would find the killed one gone from this machine
    await _both_hold(pg_url)
    os.kill(doomed.pid, signal.SIGKILL)
    await doomed.wait()
    sim.sim.release()
    _, err = await asyncio.wait_for(other.communicate(), 60)
    assert other.returncode == 0, err.decode()[-2000:]
    rows = ledger_rows(pg_url)
    # those the killed run had sent unanswered are looked up: found already cancelled
    assert {r["outcome"] for r in rows.values()} == {"cancelled", "already_cancelled"}
    assert len(rows) == len(wanted)
    deletes = _deletes(sim)
    assert set(deletes) == set(wanted)
    assert set(deletes.values()) == {1}
    assert b"orders_held_by_other_runs" in err


async def test_a_frozen_host_wakes_to_find_its_orders_taken(
    cli: Cli, make_sim: Any, tmp_path: Path, pg_url: str, spawned: list[Any]
) -> None:
    """A run frozen (SIGSTOP) longer than --claim-idle: another run takes its orders and
    finishes the input; woken, the first finds its lease lapsed and drops the orders it had
    queued that are no longer its own, and its workers confirm theirs before each DELETE: only
    requests already on the wire at the freeze can go out twice (at most one per worker, 2).
    Both end 0, and each one's summary accounts for every order of its input, those the other
    run took or answered included."""
    sim = await make_sim(latency_ms=5)
    wanted = ids("CDE", 400)
    src = write_ids(tmp_path / "in.csv", wanted)
    env = sim_env(sim, pg_url, MOUVONE_RATE="50", MOUVONE_CLAIM_IDLE="1.5")
    told = tmp_path / "frozen.json"
    frozen = await _run(
        cli, spawned, src, env, "--concurrency", "2", "--on-finish", f"cat > {told}"
    )
    await _progress(pg_url, 20)
    os.kill(frozen.pid, signal.SIGSTOP)
    try:
        other = await _run(cli, spawned, src, env, "--rate", "200")
        _, err = await asyncio.wait_for(other.communicate(), 60)
        assert other.returncode == 0, err.decode()[-2000:]
    finally:
        os.kill(frozen.pid, signal.SIGCONT)
    out, woke = await asyncio.wait_for(frozen.communicate(), 60)
    assert frozen.returncode == 0, woke.decode()[-2000:]
    assert b"lease_lapsed" in woke
    taken = accounted(woke)
    assert taken > 0
    assert f"{'taken by another run':<21}{taken:>10}" in out.decode(), out.decode()
    notified = json.loads(told.read_text())  # the notification says so too
    assert notified["taken_elsewhere"] == taken
    assert f"{taken} taken by another run" in notified["text"]
    accounted(err)
    deletes = _deletes(sim)
    assert set(deletes) == set(wanted)
    twice = [order for order, n in deletes.items() if n > 1]
    assert len(twice) <= 2, twice


@pytest.mark.timeout(300)  # the code before this test took many minutes: it fails on its clock
async def test_a_database_gone_while_the_run_was_frozen_stops_it_in_seconds(
    cli: Cli, make_sim: Any, tmp_path: Path, pg_url: str, spawned: list[Any]
) -> None:
    """The run reaches PostgreSQL through a relay; frozen (SIGSTOP) past its lease, it wakes to
    a server gone for good (every connection cut, new ones refused): it stops, exit 3, its
    last line naming the ledger, after one call's four waits for a connection (twice the
    URL's connect_timeout each) and a short one for each call after it, not four long ones for
    each of its calls in turn (that took many minutes). No order is counted as another run's
    (its check failed, nobody took it), and every order it read is accounted for."""
    sim = await make_sim(latency_ms=5)
    src = write_ids(tmp_path / "in.csv", ids("CDE", 400))
    relay = TcpRelay(int(PG_URL.rsplit(":", 1)[1].split("/", 1)[0]))
    via = pg_url.replace(PG_URL, PG_URL.replace(":5432/", f":{await relay.start()}/"), 1)
    via += "&connect_timeout=2"  # the pool waits 4 s for a connection, four times at most
    env = sim_env(sim, via, MOUVONE_RATE="50", MOUVONE_CLAIM_IDLE="1.5")
    run = await _run(cli, spawned, src, env, "--concurrency", "4")
    await _progress(pg_url, 20)
    os.kill(run.pid, signal.SIGSTOP)
    try:
        for _ in range(600):  # until its lease has lapsed, as the other runs judge it
            lapsed = table_rows(
                pg_url,
                "SELECT count(*) AS n FROM runs WHERE heartbeat_at < now() - '2 s'::interval",
            )
            if lapsed[0]["n"]:
                break
            await asyncio.sleep(0.05)
        await relay.cut()
    finally:
        os.kill(run.pid, signal.SIGCONT)
    woke = time.monotonic()
    _, err = await asyncio.wait_for(run.communicate(), 240)
    took = time.monotonic() - woke
    said = err.decode()
    assert run.returncode == 3, said[-2000:]
    last = said.strip().splitlines()[-1]
    assert last.startswith("cancel-orders: "), last
    assert "cannot reach the ledger" in last, last
    assert accounted(err) == 0
    assert b"order_taken_by_another_run" not in err
    assert took < 60, f"{took:.0f} s from the wake to the exit"


async def test_a_cut_connection_loses_nothing(
    cli: Cli, make_sim: Any, tmp_path: Path, pg_url: str, spawned: list[Any]
) -> None:
    """The server ends the run's connections twice mid-run (pg_terminate_backend): the run
    reconnects and goes on; every order and every attempt is recorded, exit 0."""
    sim = await make_sim(latency_ms=5)
    wanted = ids("CDE", 400)
    src = write_ids(tmp_path / "in.csv", wanted)
    env = sim_env(sim, pg_url, MOUVONE_RATE="150")
    proc = await _run(cli, spawned, src, env)
    for at in (50, 200):
        await _progress(pg_url, at)
        assert cut_database(pg_url) >= 1
    _, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()[-2000:]
    rows = ledger_rows(pg_url)
    assert len(rows) == len(wanted)
    assert {r["outcome"] for r in rows.values()} == {"cancelled"}
    attempts = table_rows(pg_url, "SELECT order_id FROM attempts ORDER BY written")
    assert sorted(a["order_id"] for a in attempts) == sorted(wanted)
    assert set(_deletes(sim).values()) == {1}


async def test_consumers_record_in_the_shared_ledger(
    cli: Cli, sim: RunningSimulator, queue: Queue, tmp_path: Path, pg_url: str
) -> None:
    """`consume --ledger postgresql://`: each result in the results stream and in the ledger,
    with its attempts; `report`, `history` and `runs` read queue mode from there; a file is
    refused for a consumer (its replicas could not share it)."""
    wanted = [*ids("CDE", 5), "NFD0000000001"]
    src = write_ids(tmp_path / "in.csv", wanted)
    env = queue.env(sim, tmp_path)
    assert (await cli.run("enqueue", str(src), "--yes", env=env)).code == 0
    done = await cli.run("consume", "--exit-when-empty", "--ledger", pg_url, env=env)
    assert done.code == 1, done.stderr[-2000:]
    assert len(await queue.results()) == len(wanted)
    report = await cli.run("report", "--format", "json", "--ledger", pg_url, env=env)
    found = json.loads(report.stdout)
    assert {k: v for k, v in found["outcomes"].items() if v} == {"cancelled": 5, "not_found": 1}
    history = await cli.run("history", "CDE0000000001", "--format", "json", "--ledger", pg_url)
    assert [a["method"] for a in json.loads(history.stdout)["attempts"]] == ["DELETE"]
    runs = json.loads((await cli.run("runs", "--format", "json", "--ledger", pg_url)).stdout)
    assert [r["command"] for r in runs] == ["consume"]
    refused = await cli.run("consume", "--ledger", str(tmp_path / "x.sqlite"), env=env)
    assert refused.code == 2
    assert "postgresql://" in refused.stderr


async def test_a_consumer_refuses_a_ledger_of_another_target(
    cli: Cli, make_sim: Any, queue: Queue, tmp_path: Path, pg_url: str
) -> None:
    """A PostgreSQL ledger bound to one gateway and a consumer pointed at another: exit 2
    naming both URLs, nothing sent, nothing recorded, the entries left for a consumer of the
    right target (a production `run` would have skipped orders cancelled only on staging)."""
    production, staging = await make_sim(), await make_sim()
    env = sim_env(production, pg_url)
    bound = await cli.run("run", str(write_ids(tmp_path / "o.csv", ids("CDE", 1))), "--yes",
                          env=env)  # fmt: skip
    assert bound.code == 0, bound.stderr[-2000:]
    wanted = ids("CDE", 10, start=100)
    queued = queue.env(staging, tmp_path)
    assert (await cli.run("enqueue", str(write_ids(tmp_path / "q.csv", wanted)), "--yes",
                          env=queued)).code == 0  # fmt: skip
    done = await cli.run("consume", "--exit-when-empty", "--ledger", pg_url, env=queued)
    assert done.code == 2, done.stderr[-2000:]
    last = done.stderr.strip().splitlines()[-1]
    assert production.base_url in last
    assert staging.base_url in last
    assert staging.sim.stats.arrivals == []
    assert await queue.results() == []
    recorded = table_rows(pg_url, "SELECT order_id FROM orders")
    assert [r["order_id"] for r in recorded] == ["CDE0000000001"]


async def test_control_on_a_database_without_a_ledger_says_so(
    cli: Cli, sim: RunningSimulator, pg_url: str
) -> None:
    """`control` on a database no run has used yet says what `report` says (it named a
    missing table), exit 2."""
    for args in (("control", "status"), ("control", "stop"), ("report",)):
        done = await cli.run(*args, env=sim_env(sim, pg_url))
        assert done.code == 2, args
        assert done.stderr.strip().endswith(": no ledger in this database (a run creates it)"), (
            done.stderr
        )


async def test_the_schema_is_versioned_and_a_dead_server_named(
    cli: Cli, sim: RunningSimulator, tmp_path: Path, pg_url: str
) -> None:
    """A ledger is created on first use with its version (its URL's password masked in every
    output and record); one of a newer version is refused by every command; an unreachable
    server is one line naming it, exit 2."""
    src = write_ids(tmp_path / "in.csv", ids("CDE", 2))
    env = sim_env(sim, pg_url)
    with_password = pg_url.replace("postgres@", "postgres:s3cretpw@", 1)  # trust: any will do
    done = await cli.run("run", str(src), "--yes", "--ledger", with_password, env=env)
    assert done.code == 0, done.stderr[-2000:]
    assert "s3cretpw" not in done.stdout + done.stderr
    recorded = json.dumps(table_rows(pg_url, "SELECT * FROM runs"))
    assert "postgres:***@" in recorded  # the command line, as a resume would give it
    assert "s3cretpw" not in recorded
    version = table_rows(pg_url, "SELECT version FROM ledger_schema")
    assert version == [{"version": SCHEMA_VERSION}]
    with psycopg.connect(pg_url, autocommit=True) as admin:
        admin.execute("UPDATE ledger_schema SET version = 99")
    for args in (("report",), ("run", str(src), "--yes")):
        refused = await cli.run(*args, env=env)
        assert refused.code == 2
        assert f"ledger schema 99 is newer than this tool ({SCHEMA_VERSION})" in refused.stderr
    dead = "postgresql://postgres@127.0.0.1:1/postgres"
    gone = await cli.run("report", "--ledger", dead, env=env)
    assert gone.code == 2
    assert "127.0.0.1" in gone.stderr
    assert len(gone.stderr.strip().splitlines()) == 1, gone.stderr


def test_a_server_found_gone_is_not_waited_for_again_and_again(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A call that finds no connection in its four waits marks the server gone: a call within
    GONE_WAIT_S fails at once with the same error, one after it waits GONE_WAIT_S once, and a
    call that succeeds gives the next outage its four waits again (a failover's time)."""
    db = PgDb(PostgresUrl(pg_url))
    now = [1000.0]
    monkeypatch.setattr(
        postgres, "time", SimpleNamespace(monotonic=lambda: now[0], sleep=lambda _s: None)
    )
    real = db.pool.connection
    waits: list[float | None] = []

    def refused(timeout: float | None = None) -> Any:
        waits.append(timeout)
        raise PoolTimeout(f"couldn't get a connection after {timeout or 20:.2f} sec")

    try:
        monkeypatch.setattr(db.pool, "connection", refused)
        with pytest.raises(LedgerError, match=r"cannot reach the ledger: .* \(4 tries\)$"):
            db.fetch("SELECT 1")
        assert waits == [None] * TRIES
        with pytest.raises(LedgerError, match=r"\(4 tries\)$"):  # the same answer, at once
            db.fetch("SELECT 1")
        assert waits == [None] * TRIES
        now[0] += GONE_WAIT_S
        with pytest.raises(LedgerError, match=r"after 2\.00 sec$"):
            db.fetch("SELECT 1")
        assert waits == [None] * TRIES + [GONE_WAIT_S]
        monkeypatch.setattr(db.pool, "connection", real)
        now[0] += GONE_WAIT_S
        assert db.fetch("SELECT 1") == [(1,)]  # back: the next outage is waited for again
        monkeypatch.setattr(db.pool, "connection", refused)
        waits.clear()
        with pytest.raises(LedgerError):
            db.fetch("SELECT 1")
        assert waits == [None] * TRIES
    finally:
        db.close()
