"""Queue mode against the real Redis of this machine: enqueue without duplicates, consumers in
separate processes (one killed, one frozen), the group rate limit, dead letters, redrive, a
dropped connection, SIGTERM, and the report from the results stream.

Under CI=true these tests fail when Redis is unreachable; elsewhere they are skipped."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
from collections import Counter
from pathlib import Path
from typing import Any

from tests.support import (
    REDIS_URL,
    Cli,
    Queue,
    assert_one_result_each,
    at_the_prompt,
    ids,
    max_in_window,
    redis_client,
    sim_env,
    untraced,
    write_ids,
)
from worker.queue.streams import Names, Streams
from worker.runs.enqueue import enqueue
from worker.simulator import RunningSimulator
from worker.sources import IdValidator
from worker.sources.csv_file import CsvSource


async def test_enqueue_counts_and_never_duplicates(queue: Queue, tmp_path: Path) -> None:
    """Valid IDs are appended once each, invalid and duplicate ones counted; appending the
    same batch again (a retry after a lost reply) adds nothing."""
    streams = Streams(REDIS_URL, queue.names)
    src = write_ids(tmp_path / "o.csv", [*ids("CDE", 1200), "bad", "CDE0000000001"])
    try:
        counts = await enqueue(streams, CsvSource(src, IdValidator("^[A-Z]{3}[0-9]{10}$")))
        assert counts == (1200, 1, 1)
        entries = await queue.redis.xrange(queue.names.stream, count=5)
        from worker.runs.enqueue import _append  # noqa: PLC0415 - the retry path itself

        await _append(streams, [(e, f["order_id"]) for e, f in entries])
    finally:
        await streams.close()
    assert await queue.redis.xlen(queue.names.stream) == 1200


async def test_enqueue_survives_dropped_connections(
    private_queue: Queue, cli: Cli, sim: RunningSimulator, tmp_path: Path
) -> None:
    """Connections killed again and again during a big enqueue: every ID exactly once."""
    queue = private_queue  # its clients are killed: a server of its own
    wanted = ids("CDE", 30_000)
    src = write_ids(tmp_path / "o.csv", wanted)
    proc = await cli.start("enqueue", "--yes", str(src), env=untraced(queue.env(sim, tmp_path)))
    killed = 0
    while proc.returncode is None and killed < 40:
        await asyncio.sleep(0.01)
        killed += int(await queue.redis.client_kill_filter(_type="normal", skipme=True))
        if proc.returncode is None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.wait(), 0.02)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert killed >= 3, "the enqueue ended before its connections could be dropped"
    assert proc.returncode == 0, err.decode()[-2000:]
    entries = await queue.redis.xrange(queue.names.stream)
    assert Counter(f["order_id"] for _, f in entries) == Counter(wanted)
    assert b"Enqueued 30000 orders" in out


async def test_two_consumers_one_killed(
    queue: Queue, cli: Cli, make_sim: Any, tmp_path: Path
) -> None:
    """Two consumers in separate processes, one killed with SIGKILL mid-stream: every order
    gets exactly one result, all final, none lost, and no final order gets a second DELETE."""
    running = await make_sim(latency_ms=10)
    wanted = ids("CDE", 600) + ids("ALR", 20) + ids("SUB", 20)
    env = queue.env(running, tmp_path, MOUVONE_RATE="400", MOUVONE_CONCURRENCY="8")
    assert (
        await cli.run("enqueue", "--yes", str(write_ids(tmp_path / "o.csv", wanted)), env=env)
    ).code == 0
    args = ["consume", "--exit-when-empty", "--claim-idle", "1"]
    victim = await cli.start(*args, "--consumer", "victim", env=env)
    survivor = await cli.start(*args, "--consumer", "survivor", env=env)
    await asyncio.wait_for(running.sim.wait_for_deletes(150), 30)
    await asyncio.wait_for(_until_recorded_by(queue, "victim"), 30)  # it works, then it dies
    victim.kill()
    await victim.wait()
    _, err = await asyncio.wait_for(survivor.communicate(), 90)
    assert survivor.returncode == 1, err.decode()[-2000:]  # SUB orders are rejected
    results = await queue.results()
    assert_one_result_each(results, set(wanted))
    outcomes = Counter(r["outcome"] for r in results)
    assert set(outcomes) <= {"cancelled", "already_cancelled", "rejected"}
    assert outcomes["rejected"] == 20
    assert {r["consumer"] for r in results} == {"victim", "survivor"}
    # entries delivered before are looked up first: no second DELETE for a final order
    assert running.sim.stats.resent_final == 0
    info = await queue.redis.xinfo_groups(queue.names.stream)
    assert info[0]["pending"] == 0


async def test_group_rate_limit_across_three_consumers(
    queue: Queue, cli: Cli, make_sim: Any, tmp_path: Path
) -> None:
    """Three consumers with --rate 60 together never exceed 60 requests in any second at the
    server, and still reach most of it."""
    running = await make_sim()
    wanted = ids("CDE", 360)
    env = queue.env(running, tmp_path, MOUVONE_RATE="60", MOUVONE_CONCURRENCY="8")
    assert (
        await cli.run("enqueue", "--yes", str(write_ids(tmp_path / "o.csv", wanted)), env=env)
    ).code == 0
    procs = [
        await cli.start("consume", "--exit-when-empty", "--consumer", f"c{n}", env=env)
        for n in range(3)
    ]
    done = await asyncio.wait_for(asyncio.gather(*(p.communicate() for p in procs)), 60)
    assert [p.returncode for p in procs] == [0, 0, 0], [e.decode()[-500:] for _, e in done]
    assert [e.decode().strip().splitlines()[-1] for _, e in done] == ["cancel-orders: done"] * 3
    sent = await queue.send_times()
    assert max_in_window(sent) <= 60
    span = max(sent) - min(sent)
    assert len(sent) / span > 45  # the three shared the rate, not a third each
    assert_one_result_each(await queue.results(), set(wanted))


async def test_dead_letters_then_redrive(
    queue: Queue, cli: Cli, make_sim: Any, tmp_path: Path
) -> None:
    """An entry delivered more than --max-deliveries times, and an order whose attempts run
    out, each get one retryable_failed result, go to the dead-letter stream with the reason,
    and are acknowledged; `redrive` moves them back and a later consumer finishes them."""
    running = await make_sim()
    n = queue.names
    env = queue.env(running, tmp_path, MOUVONE_MAX_ATTEMPTS="2")
    poisoned, failing = "CDE0000000001", "TMP0000000003"  # TMP...3 fails three times
    src = write_ids(tmp_path / "o.csv", [poisoned, failing, "CDE0000000002"])
    assert (await cli.run("enqueue", "--yes", str(src), env=env)).code == 0
    await queue.redis.xgroup_create(n.stream, n.group, id="0")
    first = await queue.redis.xreadgroup(n.group, "ghost", {n.stream: ">"}, count=1)
    entry_id = first[0][1][0][0]
    for _ in range(5):  # five more deliveries to consumers that died at once
        await queue.redis.xclaim(n.stream, n.group, "ghost", 0, [entry_id])
    done = await cli.run("consume", "--exit-when-empty", "--claim-idle", "0.2", env=env)
    assert done.code == 1, done.stderr[-2000:]
    results = {r["order_id"]: r for r in await queue.results()}
    assert results[poisoned]["outcome"] == "retryable_failed"
    assert results[poisoned]["error_code"] == "MAX_DELIVERIES"
    assert results[failing]["outcome"] == "retryable_failed"
    assert results["CDE0000000002"]["outcome"] == "cancelled"
    dead = {f["order_id"]: f["reason"] for _, f in await queue.redis.xrange(n.dead)}
    assert set(dead) == {poisoned, failing}
    assert "delivered 7 times" in dead[poisoned]
    assert dead[failing] == "attempts exhausted"
    assert (await queue.redis.xinfo_groups(n.stream))[0]["pending"] == 0

    moved = await cli.run("redrive", env=env)
    assert "Moved 2 dead letters" in moved.stdout
    assert await queue.redis.xlen(n.dead) == 0
    again = await cli.run("consume", "--exit-when-empty", env=env)
    assert again.code == 0, again.stderr[-2000:]
    latest = {r["order_id"]: r["outcome"] for r in await queue.results()}
    assert latest == dict.fromkeys([poisoned, failing, "CDE0000000002"], "cancelled")


async def test_connection_dropped_mid_run(
    private_queue: Queue, cli: Cli, make_sim: Any, tmp_path: Path
) -> None:
    """Redis connections killed while consuming: the consumer reconnects, nothing is lost."""
    queue = private_queue  # its clients are killed: a server of its own
    running = await make_sim(latency_ms=5)
    wanted = ids("CDE", 500)
    env = queue.env(running, tmp_path, MOUVONE_RATE="300")
    assert (
        await cli.run("enqueue", "--yes", str(write_ids(tmp_path / "o.csv", wanted)), env=env)
    ).code == 0
    proc = await cli.start("consume", "--exit-when-empty", env=env)
    for target in (100, 250, 400):
        await asyncio.wait_for(running.sim.wait_for_deletes(target), 30)
        assert await queue.redis.client_kill_filter(_type="normal", skipme=True) >= 1
    _, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()[-2000:]
    assert_one_result_each(await queue.results(), set(wanted))


async def test_entries_delivered_but_never_seen_are_taken_back(
    queue: Queue, cli: Cli, make_sim: Any, tmp_path: Path
) -> None:
    """Entries Redis delivered to this consumer's name that it never saw (a read whose reply
    was lost with its connection, a predecessor of the same name) are taken back within
    seconds, not after --claim-idle (60 s here); one delivered before the process started
    may have been sent, so it is looked up by GET first."""
    running = await make_sim()
    wanted = ids("CDE", 20)
    env = queue.env(running, tmp_path)
    assert (
        await cli.run("enqueue", "--yes", str(write_ids(tmp_path / "o.csv", wanted)), env=env)
    ).code == 0
    n = queue.names
    await queue.redis.xgroup_create(n.stream, n.group, id="0")
    unseen = await queue.redis.xreadgroup(n.group, "c", {n.stream: ">"}, count=3)
    unseen_ids = {fields["order_id"] for _, fields in unseen[0][1]}
    done = await cli.run("consume", "--consumer", "c", "--exit-when-empty", env=env, timeout=30)
    assert done.code == 0, done.stderr[-2000:]
    assert_one_result_each(await queue.results(), set(wanted))
    assert set(running.sim.stats.gets) == unseen_ids
    assert (await queue.redis.xinfo_groups(n.stream))[0]["pending"] == 0


async def test_sigterm_finishes_in_flight_and_the_rest_is_claimed(
    queue: Queue, cli: Cli, make_sim: Any, tmp_path: Path
) -> None:
    """SIGTERM: stop reading, finish what is in flight, exit 143; what it held but had not
    finished is claimed by another consumer."""
    running = await make_sim(latency_ms=50)
    wanted = ids("CDE", 200)
    env = queue.env(running, tmp_path, MOUVONE_RATE="100", MOUVONE_CONCURRENCY="8")
    assert (
        await cli.run("enqueue", "--yes", str(write_ids(tmp_path / "o.csv", wanted)), env=env)
    ).code == 0
    first = await cli.start("consume", "--consumer", "first", "--claim-idle", "1", env=env)
    await asyncio.wait_for(running.sim.wait_for_deletes(40), 30)
    first.send_signal(signal.SIGTERM)
    out, err = await asyncio.wait_for(first.communicate(), 30)
    assert first.returncode == 143, err.decode()[-2000:]
    assert b"Consumer first: exit 143" in out
    second = await cli.run(
        "consume", "--consumer", "second", "--exit-when-empty", "--claim-idle", "1", env=env
    )
    assert second.code == 0, second.stderr[-2000:]
    results = await queue.results()
    assert_one_result_each(results, set(wanted))
    assert running.sim.stats.resent_final == 0


async def test_frozen_consumer_does_not_cancel_what_others_finished(
    queue: Queue, cli: Cli, make_sim: Any, tmp_path: Path
) -> None:
    """A consumer frozen (SIGSTOP) longer than --claim-idle loses its entries to another; on
    waking it sends no DELETE for an order whose result the other already recorded.

    It is frozen with each of its four workers' requests on the wire (held by the simulator):
    frozen between its last ownership check and the write of its request, a process would
    send that one DELETE on waking, and no check can close that window (docs/failure-modes.md).
    """
    running = await make_sim(latency_ms=20)
    wanted = ids("CDE", 300)
    env = queue.env(running, tmp_path, MOUVONE_RATE="150", MOUVONE_CONCURRENCY="4")
    assert (
        await cli.run("enqueue", "--yes", str(write_ids(tmp_path / "o.csv", wanted)), env=env)
    ).code == 0
    args = ["consume", "--claim-idle", "0.5"]
    frozen = await cli.start(*args, "--consumer", "frozen", env=env)
    await asyncio.wait_for(running.sim.wait_for_deletes(30), 30)
    running.sim.hold()
    await asyncio.wait_for(running.sim.wait_for_held(4), 30)
    frozen.send_signal(signal.SIGSTOP)
    n = queue.names
    mine = await queue.redis.xpending_range(n.stream, n.group, "-", "+", 100, "frozen")
    held = {row["message_id"] for row in mine}
    running.sim.release()
    other = await cli.run(*args, "--consumer", "other", "--exit-when-empty", env=env)
    assert other.code == 0, other.stderr[-2000:]
    finished = {r["order_id"] for r in await queue.results()}
    sent_before = Counter(running.sim.stats.deletes)
    frozen.send_signal(signal.SIGCONT)
    # Awake, its workers find every entry it held another's: when they take one, or when the
    # answer of one of its requests on the wire is to be written.
    gone = {"entry_not_ours", "entry_lost_before_ack"}
    lines = await _lines_until(frozen, lambda e: e["event"] in gone, held)
    frozen.send_signal(signal.SIGTERM)
    # up to --grace (35 s) for what it has in flight on a busy machine, and then some
    _, rest = await asyncio.wait_for(frozen.communicate(), 60)
    err = b"".join(lines) + rest
    assert frozen.returncode == 143, err.decode()[-2000:]
    sent_after = Counter(running.sim.stats.deletes) - sent_before
    assert not (set(sent_after) & finished), sent_after
    assert_one_result_each(await queue.results(), set(wanted))
    events = [json.loads(line) for line in err.decode().splitlines() if line.startswith("{")]
    assert any(e["event"] == "entry_taken_by_another_consumer" for e in events)


async def _lines_until(
    proc: asyncio.subprocess.Process, match: Any, entry_ids: set[str]
) -> list[bytes]:
    """Read the process's standard error until events ``match`` named every entry."""
    assert proc.stderr is not None
    lines: list[bytes] = []
    seen: set[str] = set()
    while not entry_ids <= seen:
        line = await asyncio.wait_for(proc.stderr.readline(), 30)
        assert line, f"ended before naming {entry_ids - seen}"
        lines.append(line)
        if line.startswith(b"{") and match(event := json.loads(line)):
            seen.add(event["entry_id"])
    return lines


async def test_report_from_the_results_stream(
    queue: Queue, cli: Cli, make_sim: Any, tmp_path: Path
) -> None:
    """`report --results-stream` in the three formats of the ledger report."""
    running = await make_sim()
    wanted = ids("CDE", 5) + ids("NFD", 2) + ids("CTR", 1)
    env = queue.env(running, tmp_path)
    assert (
        await cli.run("enqueue", "--yes", str(write_ids(tmp_path / "o.csv", wanted)), env=env)
    ).code == 0
    assert (await cli.run("consume", "--exit-when-empty", env=env)).code == 1
    base = ["report", "--results-stream", queue.names.results]
    as_json = json.loads((await cli.run(*base, "--format", "json", env=env)).stdout)
    assert as_json["total"] == 8
    assert as_json["outcomes"]["cancelled"] == 5
    assert as_json["outcomes"]["not_found"] == 2
    assert as_json["error_codes"]["CANNOT_CANCEL_ORDER_WITH_ASSOCIATED_CONTAINER"] == 1
    as_csv = (await cli.run(*base, "--format", "csv", "--outcome", "not_found", env=env)).stdout
    assert as_csv.splitlines()[0].startswith("order_id,outcome,http_status")
    assert len(as_csv.splitlines()) == 3
    table = (await cli.run(*base, env=env)).stdout
    assert f"Results stream {queue.names.results}" in table
    page = (await cli.run(*base, "--format", "html", env=env)).stdout
    assert f"results stream {queue.names.results}" in page
    assert "results.sqlite" not in page  # the scratch ledger's path is not shown


async def test_redis_unreachable_is_a_clear_error(cli: Cli, tmp_path: Path) -> None:
    """No Redis at the URL: one line naming it, exit 2."""
    src = write_ids(tmp_path / "o.csv", ids("CDE", 3))
    env = {"MOUVONE_REDIS_URL": "redis://127.0.0.1:1/0", "PATH": os.environ.get("PATH", "")}
    done = await cli.run("enqueue", "--yes", str(src), env=env, timeout=90)
    assert done.code == 2
    assert "127.0.0.1:1/0 is unreachable" in done.stderr.strip().splitlines()[-1]


async def test_group_rate_holds_when_a_frozen_replica_wakes(
    queue: Queue, cli: Cli, make_sim: Any, tmp_path: Path
) -> None:
    """Three consumers at --rate 150, one frozen (SIGSTOP) for 5 s while the others take the
    rate, then woken: the slots it was granted before the freeze are taken again, so no second
    at the server carries more than 150."""
    running = await make_sim(latency_ms=20)
    wanted = ids("CDE", 2400)
    env = untraced(
        queue.env(
            running, tmp_path, MOUVONE_RATE="150", MOUVONE_CONCURRENCY="16", MOUVONE_CLAIM_IDLE="30"
        )
    )
    assert (
        await cli.run("enqueue", "--yes", str(write_ids(tmp_path / "o.csv", wanted)), env=env)
    ).code == 0
    procs = [
        await cli.start("consume", "--exit-when-empty", "--consumer", f"c{n}", env=env)
        for n in range(3)
    ]
    await asyncio.wait_for(running.sim.wait_for_deletes(300), 30)
    procs[0].send_signal(signal.SIGSTOP)
    await asyncio.sleep(5)  # the freeze itself, not a synchronisation
    procs[0].send_signal(signal.SIGCONT)
    done = await asyncio.wait_for(asyncio.gather(*(p.communicate() for p in procs)), 90)
    assert [p.returncode for p in procs] == [0, 0, 0], [e.decode()[-500:] for _, e in done]
    assert max_in_window(await queue.send_times()) <= 150
    assert_one_result_each(await queue.results(), set(wanted))


async def test_finish_sent_twice_counts_once(queue: Queue) -> None:
    """The reply to the finishing script is lost and the call sent again: the second call
    answers "already finished by me", not "taken by another consumer"; another consumer's
    call on the same entry is still refused."""
    n = queue.names
    streams = Streams(REDIS_URL, n)
    other = Streams(REDIS_URL, Names(n.stream, n.group, "other", n.results, n.dead))
    try:
        await streams.ensure_group()
        await queue.redis.xadd(n.stream, {"order_id": "CDE0000000001"})
        ((_, entries),) = await queue.redis.xreadgroup(n.group, n.consumer, {n.stream: ">"})
        entry_id = entries[0][0]
        fields = ["order_id", "CDE0000000001", "outcome", "cancelled"]
        assert await streams.finish(entry_id, "CDE0000000001", "cancelled", "", fields)
        assert await streams.finish(entry_id, "CDE0000000001", "cancelled", "", fields)
        assert not await other.finish(entry_id, "CDE0000000001", "cancelled", "", fields)
        assert await queue.redis.xlen(n.results) == 1
    finally:
        await streams.close()
        await other.close()


async def test_a_task_cancelled_during_a_command_ends_cancelled(queue: Queue) -> None:
    """A task cancelled while its Redis command is being sent ends cancelled: on Python 3.11,
    ``asyncio.wait_for`` (through which redis-py sends with a socket timeout) loses a cancel
    that arrives as the send finishes, and the task went on (a consumer's steering loop kept
    polling after the group was empty, and the process never exited)."""
    streams = Streams(REDIS_URL, queue.names)

    async def poll() -> None:
        while True:  # as the steering loop does
            await streams.redis.hgetall(f"{queue.names.group}:control")

    try:
        await streams.redis.ping()
        for turns in range(400):
            task = asyncio.ensure_future(poll())
            for _ in range(turns % 25):  # cancelled at each step of a command in turn
                await asyncio.sleep(0)
            task.cancel()
            done, _ = await asyncio.wait([task], timeout=10)
            assert done, f"cancelled after {turns % 25} turns, the task went on"
            assert task.cancelled()
    finally:
        await streams.close()


async def test_enqueue_to_a_redis_out_of_memory(
    private_redis: str, cli: Cli, sim: RunningSimulator, tmp_path: Path
) -> None:
    """Redis refuses writes (out of memory): enqueue says so while it retries, then gives up
    with exit 3 and a clear message instead of looping for ever."""
    admin = redis_client(private_redis)
    await admin.config_set("maxmemory", "1")
    await admin.aclose()
    env = sim_env(sim, tmp_path / "l.sqlite", MOUVONE_REDIS_URL=private_redis,
                  MOUVONE_OUTAGE_TIMEOUT="2")  # fmt: skip
    done = await cli.run(
        "enqueue", "--yes", str(write_ids(tmp_path / "o.csv", ids("CDE", 10))), env=env
    )
    assert done.code == 3, done.stderr[-2000:]
    assert "redis_unavailable" in done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert "Redis has been unavailable" in last


async def test_consume_from_a_redis_that_refuses_writes(
    private_redis: str, cli: Cli, sim: RunningSimulator, tmp_path: Path
) -> None:
    """Redis starts refusing writes (out of memory) while a consumer runs: it backs off and
    says so, and when the refusal lasts it ends with exit 3 and a clear message."""
    env = sim_env(sim, tmp_path / "l.sqlite", MOUVONE_REDIS_URL=private_redis,
                  MOUVONE_OUTAGE_TIMEOUT="3", MOUVONE_RATE="20")  # fmt: skip
    added = await cli.run(
        "enqueue", "--yes", str(write_ids(tmp_path / "o.csv", ids("CDE", 200))), env=env
    )
    assert added.code == 0, added.stderr[-2000:]
    proc = await cli.start("consume", "--exit-when-empty", env=env)
    await asyncio.wait_for(sim.sim.wait_for_deletes(10), 30)
    admin = redis_client(private_redis)
    await admin.config_set("maxmemory", "1")
    await admin.aclose()
    _, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 3, err.decode()[-2000:]
    assert b"redis_unavailable" in err
    assert b"Redis has been unavailable" in err.strip().splitlines()[-1]


async def test_queue_names_never_fall_back_on_shared_ones(
    queue: Queue, cli: Cli, sim: RunningSimulator, tmp_path: Path
) -> None:
    """Only --stream X:requests given: the group, results, final set and dead letters are X's,
    never the shared cancel-orders ones; --namespace names them all the same way."""
    prefix = queue.names.stream.split(":")[0]
    env = sim_env(sim, tmp_path / "l.sqlite", MOUVONE_REDIS_URL=REDIS_URL)
    src = write_ids(tmp_path / "o.csv", ["CDE0000000001", "SUB0000000001"])
    for given, code in (([f"--stream={prefix}:requests"], 1), ([f"--namespace={prefix}"], 0)):
        assert (await cli.run("enqueue", "--yes", str(src), *given, env=env)).code == 0
        done = await cli.run("consume", "--exit-when-empty", *given, env=env)
        assert done.code == code, done.stderr[-2000:]  # the second time both are final already
        assert f"{prefix}:results" in done.stderr
    results = await queue.redis.xrange(f"{prefix}:results")
    assert len(results) == 2  # the second round found both final: acknowledged, not resent
    assert await queue.redis.hlen(f"{prefix}:results:final") == 2
    groups = await queue.redis.xinfo_groups(f"{prefix}:requests")
    assert [g["name"] for g in groups] == [prefix]


async def test_enqueue_refuses_more_than_max_orders(
    queue: Queue, cli: Cli, sim: RunningSimulator, tmp_path: Path
) -> None:
    """enqueue --max-orders N: more valid, distinct IDs than N is refused (exit 2), nothing
    enqueued."""
    env = queue.env(sim, tmp_path)
    src = write_ids(tmp_path / "o.csv", [*ids("CDE", 5), "CDE0000000001", "bad"])
    done = await cli.run("enqueue", "--yes", str(src), "--max-orders", "4", env=env)
    assert done.code == 2
    assert "5 orders would be sent, more than --max-orders 4" in done.stderr
    assert await queue.redis.exists(queue.names.stream) == 0


async def test_enqueue_dry_run_and_confirmation(
    queue: Queue, cli: Cli, sim: RunningSimulator, tmp_path: Path
) -> None:
    """enqueue --dry-run counts what would be enqueued and enqueues nothing; without --yes
    off a terminal nobody can confirm: exit 2, nothing enqueued."""
    env = queue.env(sim, tmp_path)
    src = write_ids(tmp_path / "o.csv", [*ids("CDE", 5), "CDE0000000001", "bad"])
    dry = await cli.run("enqueue", "--dry-run", str(src), env=env)
    assert dry.code == 1  # one invalid ID
    assert "Would enqueue 5 orders" in dry.stdout
    assert queue.names.stream in dry.stdout
    unconfirmed = await cli.run("enqueue", str(src), env=env)
    assert unconfirmed.code == 2
    assert "pass --yes" in unconfirmed.stderr.strip().splitlines()[-1]
    assert await queue.redis.exists(queue.names.stream) == 0


async def _until_recorded_by(queue: Queue, consumer: str) -> None:
    """Return once the results stream holds a result this consumer wrote."""
    while not any(r["consumer"] == consumer for r in await queue.results()):
        await asyncio.sleep(0.05)


async def test_enqueue_to_a_read_only_replica(
    private_redis: str, cli: Cli, sim: RunningSimulator, tmp_path: Path
) -> None:
    """A Redis that is a read-only replica: enqueue gives up (exit 3) once its patience is
    spent (here the outage timeout, 2 s; at most 30 s by default), its last line naming the
    server and the refusal; nothing enqueued."""
    admin = redis_client(private_redis)
    await admin.execute_command("REPLICAOF", "127.0.0.1", "1")  # a master that is not there
    env = sim_env(sim, tmp_path / "l.sqlite", MOUVONE_REDIS_URL=private_redis,
                  MOUVONE_OUTAGE_TIMEOUT="2")  # fmt: skip
    done = await cli.run(
        "enqueue", "--yes", str(write_ids(tmp_path / "o.csv", ids("CDE", 10))), env=env
    )
    await admin.execute_command("REPLICAOF", "NO", "ONE")
    length = await admin.xlen("cancel-orders:requests")
    await admin.aclose()
    assert done.code == 3, done.stderr[-2000:]
    last = done.stderr.strip().splitlines()[-1]
    assert private_redis.removesuffix("/0").split("//")[1] in last
    assert "read only" in last.lower() or "readonly" in last.lower(), last
    assert length == 0


async def test_enqueue_sends_what_was_confirmed(
    queue: Queue, cli: Cli, sim: RunningSimulator, tmp_path: Path
) -> None:
    """`enqueue` asks about 10 orders; the input file grows to 60 before the "yes": it stops
    (exit 4) naming the change, nothing appended; the same command then asks about 60."""
    src = write_ids(tmp_path / "o.csv", ids("CDE", 10))
    env = queue.env(sim, tmp_path)

    def grow() -> None:
        with src.open("a") as more:
            more.writelines(f"{order}\n" for order in ids("CDE", 50, start=11))

    code, asked, said = await at_the_prompt(cli, ("enqueue", str(src)), env, b"yes\n", grow)
    assert "About to enqueue 10 orders" in asked
    assert code == 4, said[-2000:]
    assert "changed after it was counted" in said
    assert await queue.redis.xlen(queue.names.stream) == 0
    code, asked, said = await at_the_prompt(cli, ("enqueue", str(src)), env, b"yes\n")
    assert "About to enqueue 60 orders" in asked
    assert code == 0, said[-2000:]
    assert await queue.redis.xlen(queue.names.stream) == 60
