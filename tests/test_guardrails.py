"""Guardrails of a destructive run, through the CLI against the simulator: preconditions
checked right before each DELETE (--require-status), a canary that goes first (--canary),
plans, live control and its rate ceiling, bounded durations."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from structlog.testing import capture_logs

from tests.fakes import FakeClock
from tests.support import (
    Cli,
    Queue,
    ids,
    ledger_rows,
    max_in_window,
    on_a_terminal,
    read_until,
    send_times,
    sim_env,
    write_ids,
)
from worker.api.limiter import RateLimiter
from worker.pipeline.control import RunControl
from worker.pipeline.steering import Steering
from worker.simulator import RunningSimulator


async def test_require_status_sends_only_orders_in_those_statuses(
    cli: Cli, sim: RunningSimulator, tmp_path: Path
) -> None:
    """--require-status Draft,Valid: every order is looked up right before its DELETE; one the
    API shows Submitted is recorded skipped (PRECONDITION_STATUS, the status seen in the
    message) and never sent; one it shows Cancelled is already_cancelled (a success, as `plan
    --check` predicts); one that does not exist is not_found without a DELETE."""
    ledger = tmp_path / "l.sqlite"
    fine = ids("CDE", 4)
    wanted = [*fine, "SUB0000000001", "ALR0000000001", "NFD0000000001"]
    src = write_ids(tmp_path / "o.csv", wanted)
    env = sim_env(sim, ledger)
    done = await cli.run("run", str(src), "--yes", "--require-status", "Draft,Valid", env=env)
    assert done.code == 1, done.stderr[-2000:]
    assert set(sim.sim.stats.deletes) == set(fine)
    assert set(sim.sim.stats.gets) == set(wanted)
    rows = ledger_rows(ledger)
    assert {rows[o]["outcome"] for o in fine} == {"cancelled"}
    assert rows["SUB0000000001"]["outcome"] == "skipped"
    assert rows["SUB0000000001"]["error_code"] == "PRECONDITION_STATUS"
    assert "status Submitted" in rows["SUB0000000001"]["message"]
    assert rows["ALR0000000001"]["outcome"] == "already_cancelled"
    assert rows["ALR0000000001"]["error_code"] == "ORDER_ALREADY_CANCELED"
    assert rows["NFD0000000001"]["outcome"] == "not_found"
    assert "skipped" in done.stdout
    again = await cli.run("run", str(src), "--yes", "--require-status", "Draft,Valid", env=env)
    assert again.code == 1  # skipped is final: nothing is looked up or sent again
    assert set(sim.sim.stats.deletes) == set(fine)


async def test_a_canary_that_is_not_clean_stops_the_run(
    cli: Cli, sim: RunningSimulator, tmp_path: Path
) -> None:
    """--canary 3 with a rejected order among the first three: exactly three orders are sent,
    exit 4 naming it, the rest pending; once it is taken out of the input, the same command
    sends the rest (its first three are the new canary)."""
    ledger = tmp_path / "l.sqlite"
    rest = ids("CDE", 20, start=3)
    first = ["CDE0000000001", "SUB0000000001", "CDE0000000002"]
    src = write_ids(tmp_path / "o.csv", [*first, *rest])
    env = sim_env(sim, ledger)
    stopped = await cli.run("run", str(src), "--yes", "--canary", "3", env=env)
    assert stopped.code == 4, stopped.stderr[-2000:]
    assert set(sim.sim.stats.deletes) == set(first)
    assert "canary" in stopped.stderr.strip().splitlines()[-1]
    assert "SUB0000000001" in stopped.stderr
    rows = ledger_rows(ledger)
    assert {rows[o]["outcome"] for o in rest} <= {"pending"}
    resumed = await cli.run("run", str(src), "--yes", "--canary", "3", env=env)
    assert resumed.code == 1, resumed.stderr[-2000:]  # the rejected one stays rejected
    assert set(sim.sim.stats.deletes) == {*first, *rest}
    assert sum(sim.sim.stats.deletes.values()) == len(first) + len(rest)


async def test_a_clean_canary_lets_the_rest_go(
    cli: Cli, sim: RunningSimulator, tmp_path: Path
) -> None:
    """--canary 5 with five good orders first: the whole input is sent, exit 0."""
    ledger = tmp_path / "l.sqlite"
    src = write_ids(tmp_path / "o.csv", ids("CDE", 40))
    done = await cli.run("run", str(src), "--yes", "--canary", "5", env=sim_env(sim, ledger))
    assert done.code == 0, done.stderr[-2000:]
    assert len(sim.sim.stats.deletes) == 40
    assert "canary_passed" in done.stderr


async def _until_status(cli: Cli, ledger: Path, text: str) -> str:
    """`control status` until it shows ``text`` (the run publishes twice a second)."""
    for _ in range(100):
        shown = await cli.run("control", "--ledger", str(ledger), "status")
        if shown.code == 0 and text in shown.stdout:
            return shown.stdout
        await asyncio.sleep(0.1)
    raise AssertionError(f"control status never showed {text!r}: {shown.stdout}{shown.stderr}")


async def test_control_pauses_rerates_and_stops_a_running_run(
    cli: Cli, sim: RunningSimulator, tmp_path: Path
) -> None:
    """`control` through the ledger: pause brings the requests to zero and status says so,
    resume brings them back, `rate 5` holds the run at 5 a second, `rate 50` over its ceiling
    is said to be held at it, stop ends it with exit 4, and the same command afterwards
    finishes the rest."""
    ledger = tmp_path / "l.sqlite"
    # enough orders that the run cannot finish while the `control` commands start (seconds
    # each on a busy machine): at 20/s, 20 s of them
    src = write_ids(tmp_path / "o.csv", ids("CDE", 400))
    env = sim_env(sim, ledger, MOUVONE_RATE="20", MOUVONE_CONCURRENCY="4")
    proc = await cli.start("run", str(src), "--yes", env=env)
    await asyncio.wait_for(sim.sim.wait_for_deletes(10), 30)
    assert (await cli.run("control", "--ledger", str(ledger), "pause")).code == 0
    assert "paused (control)" in await _until_status(cli, ledger, "paused")  # the stage
    held = len(sim.sim.stats.arrivals)
    await asyncio.sleep(1.5)  # an observation window: nothing may arrive in it
    assert len(sim.sim.stats.arrivals) - held <= 4  # at most the requests already in flight
    assert (await cli.run("control", "--ledger", str(ledger), "resume")).code == 0
    await asyncio.wait_for(sim.sim.wait_for_deletes(held + 10), 30)
    assert (await cli.run("control", "--ledger", str(ledger), "rate", "5")).code == 0
    await _until_status(cli, ledger, "set 5.0")  # taken: what is sent from now on keeps to it
    since = time.time()
    await asyncio.wait_for(sim.sim.wait_for_deletes(len(sim.sim.stats.deletes) + 12), 30)
    until = time.time()
    # over the run's ceiling (its --rate, 20: no --max-rate): taken as the ceiling, and said
    capped = await cli.run("control", "--ledger", str(ledger), "rate", "50")
    assert capped.code == 0
    assert "at most 20/s, its ceiling" in capped.stdout, capped.stdout
    assert "at most 20.0" in await _until_status(cli, ledger, "set 20.0")
    assert (await cli.run("control", "--ledger", str(ledger), "stop")).code == 0
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 4, err.decode()[-2000:]
    assert "control stop" in err.decode().strip().splitlines()[-1]
    # at the run's own send times (the server's arrivals bunch up on a busy machine)
    at_five = [t for t in send_times(ledger) if since <= t <= until]
    assert len(at_five) >= 10, at_five
    assert max_in_window(at_five) <= 5
    rows = ledger_rows(ledger)
    assert "pending" in {r["outcome"] for r in rows.values()}
    again = await cli.run("run", str(src), "--yes", "--rate", "500", env=env)
    assert again.code == 0, again.stderr[-2000:]
    assert len(sim.sim.stats.deletes) == 400
    gone = await cli.run("control", "--ledger", str(ledger), "status")
    assert gone.code == 2
    assert "no run is running" in gone.stderr


async def test_control_stops_and_resumes_a_consumer_group(
    queue: Queue, cli: Cli, make_sim: Any, tmp_path: Path
) -> None:
    """`control --redis-url ... stop` ends a running consumer with exit 4; the group stays
    stopped (a consumer started meanwhile exits 4 at once, nothing sent) until `control resume`;
    then the group finishes every order once."""
    running = await make_sim(latency_ms=5)
    wanted = ids("CDE", 150)
    env = queue.env(running, tmp_path, MOUVONE_RATE="50")
    assert (
        await cli.run("enqueue", "--yes", str(write_ids(tmp_path / "o.csv", wanted)), env=env)
    ).code == 0
    proc = await cli.start("consume", "--consumer", "one", env=env)
    await asyncio.wait_for(running.sim.wait_for_deletes(20), 30)
    assert (await cli.run("control", "stop", env=env)).code == 0
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 4, err.decode()[-2000:]
    status = await cli.run("control", "status", env=env)
    assert "stop=1" in status.stdout
    assert "one:" in status.stdout
    sent = sum(running.sim.stats.deletes.values())
    late = await cli.run("consume", "--consumer", "two", "--exit-when-empty", env=env, timeout=20)
    assert late.code == 4, late.stderr[-2000:]
    assert sum(running.sim.stats.deletes.values()) == sent
    assert (await cli.run("control", "resume", env=env)).code == 0
    # "one" again: what it held when it stopped is its own, taken back at once
    finish = ["consume", "--consumer", "one", "--exit-when-empty", "--rate", "500"]
    done = await cli.run(*finish, env=env, timeout=25)
    assert done.code == 0, done.stderr[-2000:]
    per_order = Counter(r["order_id"] for r in await queue.results())
    assert set(per_order) == set(wanted)
    assert max(per_order.values()) == 1


async def test_plan_then_apply_sends_exactly_the_plan(
    cli: Cli, sim: RunningSimulator, tmp_path: Path
) -> None:
    """`plan` sends nothing and writes the orders to send (distinct, valid, not final in the
    ledger) sealed by their digest; `apply` sends exactly those, and the run records the
    plan's digest."""
    ledger = tmp_path / "l.sqlite"
    wanted = ids("CDE", 10)
    src = write_ids(tmp_path / "o.csv", [*wanted, wanted[0]])
    plan_file = tmp_path / "plan.json"
    env = sim_env(sim, ledger)
    planned = await cli.run(
        "plan", str(src), "--output", str(plan_file), "--reason", "T-1", env=env
    )
    assert planned.code == 0, planned.stderr[-2000:]
    assert sim.sim.stats.arrivals == []
    assert sim.sim.stats.token_requests == 0
    plan = json.loads(plan_file.read_text())
    assert plan["orders"] == wanted
    assert plan["count"] == 10
    assert plan["target"] == sim.base_url
    assert plan["reason"] == "T-1"
    assert len(plan["input"]["sha256"]) == 64
    assert plan["digest"][:12] in planned.stdout
    checked_file = tmp_path / "checked.json"
    checked = await cli.run("plan", str(src), "--output", str(checked_file), "--check", env=env)
    assert checked.code == 0, checked.stderr[-2000:]
    assert json.loads(checked_file.read_text())["predictions"] == dict.fromkeys(wanted, "cancelled")
    assert sim.sim.stats.deletes == {}  # --check looks up, never cancels
    reviewed = await cli.run(
        "plan", str(src), "--output", str(checked_file), "--check", "--reason", "T-2",
        "--ticket", "OPS-7", env=env,
    )  # fmt: skip
    assert reviewed.code == 0, reviewed.stderr[-2000:]
    shown = await cli.run("apply", str(checked_file), "--dry-run", env=env)
    assert shown.code == 0, shown.stderr[-2000:]
    assert "About to cancel 10 orders" in shown.stderr  # what its prompt would show
    assert "Reason:  T-2 (ticket OPS-7)" in shown.stderr
    assert "Checked: predicted when planned: cancelled 10" in shown.stderr
    assert "Time:    about 0 s at --rate 200\n" in shown.stderr
    looked = await cli.run("apply", str(checked_file), "--dry-run", "--require-status", "Draft",
                           "--rate", "10", env=env)  # fmt: skip
    # a look-up before each DELETE: twice the requests, twice the time
    assert "about 2 s at --rate 10 (a look-up and a DELETE per order)" in looked.stderr
    assert sim.sim.stats.deletes == {}
    applied = await cli.run("apply", str(plan_file), "--yes", env=env)
    assert applied.code == 0, applied.stderr[-2000:]
    assert sorted(sim.sim.stats.deletes) == wanted
    with sqlite3.connect(ledger) as db:
        (summary,) = db.execute("SELECT summary FROM runs ORDER BY started_at DESC").fetchone()
    assert json.loads(summary)["plan"] == plan["digest"]


async def test_an_apply_stopped_early_says_until_when_it_can_be_resumed(
    cli: Cli, make_sim: Any, tmp_path: Path
) -> None:
    """An `apply` stopped before its end (here by its stop file) names the moment its plan
    expires in its one next step: after it, the same command is refused (a new plan, reviewed
    again); before it, the same command finishes the job."""
    sim = await make_sim()
    ledger = tmp_path / "l.sqlite"
    wanted = ids("CDE", 5)
    src = write_ids(tmp_path / "o.csv", wanted)
    plan_file = tmp_path / "plan.json"
    env = sim_env(sim, ledger)
    assert (await cli.run("plan", str(src), "--output", str(plan_file), env=env)).code == 0
    expires_at = json.loads(plan_file.read_text())["expires_at"]
    stop_file = tmp_path / "stop"
    stop_file.touch()
    command = ("apply", str(plan_file), "--yes", "--stop-file", str(stop_file))
    stopped = await cli.run(*command, env=env)
    assert stopped.code == 4, stopped.stderr[-2000:]
    assert f"next: resume with the same command before the plan expires at {expires_at}:" in (
        stopped.stdout
    )
    (summary,) = [json.loads(line) for line in stopped.stderr.splitlines() if "run_summary" in line]
    assert summary["resume_before"] == expires_at
    stop_file.unlink()
    finished = await cli.run(*command, env=env)
    assert finished.code == 0, finished.stderr[-2000:]
    assert "resume_before" not in finished.stderr
    assert sorted(sim.sim.stats.deletes) == wanted


async def test_apply_refuses_a_plan_edited_expired_or_for_another_target(
    cli: Cli, make_sim: Any, tmp_path: Path
) -> None:
    """A plan whose orders were edited by one byte, that expired a second ago, or that was
    made for another base URL: exit 2 naming the file and the fault, nothing sent."""
    sim, other = await make_sim(), await make_sim()
    ledger = tmp_path / "l.sqlite"
    src = write_ids(tmp_path / "o.csv", ids("CDE", 5))
    plan_file = tmp_path / "plan.json"
    env = sim_env(sim, ledger)
    assert (await cli.run("plan", str(src), "--output", str(plan_file), env=env)).code == 0
    good = json.loads(plan_file.read_text())
    edited = {**good, "orders": [good["orders"][0][:-1] + "9", *good["orders"][1:]]}
    expired = {**good, "expires_at": (datetime.now(UTC) - timedelta(seconds=1)).isoformat()}
    for content, fault, where in (
        (edited, "do not match its digest", env),
        (expired, "expired", env),
        (good, sim.base_url, sim_env(other, tmp_path / "other.sqlite")),
    ):
        plan_file.write_text(json.dumps(content))
        refused = await cli.run("apply", str(plan_file), "--yes", env=where)
        assert refused.code == 2, refused.stderr[-2000:]
        last = refused.stderr.strip().splitlines()[-1]
        assert str(plan_file) in last
        assert fault in last
    assert sim.sim.stats.arrivals == other.sim.stats.arrivals == []


async def test_consume_requires_the_status_too(
    queue: Queue, cli: Cli, make_sim: Any, tmp_path: Path
) -> None:
    """`consume --require-status Draft,Valid`: the same look-up right before each DELETE; a
    Submitted order gets a `skipped` result (PRECONDITION_STATUS), a Cancelled one
    `already_cancelled`, neither a DELETE."""
    running = await make_sim()
    fine = ids("CDE", 3)
    env = queue.env(running, tmp_path)
    src = write_ids(tmp_path / "o.csv", [*fine, "SUB0000000001", "ALR0000000001"])
    assert (await cli.run("enqueue", "--yes", str(src), env=env)).code == 0
    args = ["consume", "--exit-when-empty", "--require-status", "Draft,Valid"]
    done = await cli.run(*args, env=env)
    assert done.code == 1, done.stderr[-2000:]
    assert set(running.sim.stats.deletes) == set(fine)
    results = {r["order_id"]: r for r in await queue.results()}
    assert results["SUB0000000001"]["outcome"] == "skipped"
    assert results["SUB0000000001"]["error_code"] == "PRECONDITION_STATUS"
    assert results["ALR0000000001"]["outcome"] == "already_cancelled"
    assert {results[o]["outcome"] for o in fine} == {"cancelled"}


async def test_a_huge_duration_is_a_usage_error(
    cli: Cli, sim: RunningSimulator, tmp_path: Path
) -> None:
    """`--expires-in`, `prune --older-than`, `audit --since`, `select --older-than` and
    `--run-time` beyond a hundred years: exit 2 naming the flag, no traceback, nothing sent."""
    env = sim_env(sim, tmp_path / "l.sqlite")
    src = write_ids(tmp_path / "o.csv", ids("CDE", 1))
    assert (await cli.run("run", str(src), "--yes", env=env)).code == 0
    huge = "100000000d"
    for args, flag in (
        (("plan", str(src), "--output", str(tmp_path / "p.json"), "--expires-in", huge),
         "--expires-in"),
        (("prune", "--older-than", huge), "--older-than"),
        (("audit", "--since", huge), "--since"),
        (("select", "--status", "Draft", "--older-than", huge), "--older-than"),
        (("run", str(src), "--yes", "--force", "--run-time", huge), "run_time"),
    ):  # fmt: skip
        done = await cli.run(*args, env=env)
        assert done.code == 2, (args, done.stderr[-1000:])
        last = done.stderr.strip().splitlines()[-1]
        assert flag in last, last
        assert "Traceback" not in done.stderr
    assert list(sim.sim.stats.deletes) == ["CDE0000000001"]


async def test_required_statuses_are_known_and_matched_without_case(
    cli: Cli, sim: RunningSimulator, tmp_path: Path
) -> None:
    """`--require-status draft,valid` sends the Draft orders (the case of a status does not
    matter); a status the API does not have (`Drafts`) is exit 2 naming it and the API's
    statuses, before anything is looked up or sent."""
    ledger = tmp_path / "l.sqlite"
    env = sim_env(sim, ledger)
    src = write_ids(tmp_path / "o.csv", ids("CDE", 3))
    wrong = await cli.run("run", str(src), "--yes", "--require-status", "Draft,Drafts", env=env)
    assert wrong.code == 2
    last = wrong.stderr.strip().splitlines()[-1]
    assert "unknown status Drafts" in last
    assert "InProcess" in last
    assert sim.sim.stats.arrivals == []
    done = await cli.run("run", str(src), "--yes", "--require-status", "draft,valid", env=env)
    assert done.code == 0, done.stderr[-2000:]
    assert sorted(sim.sim.stats.deletes) == ids("CDE", 3)


class _Channel:
    """A control channel whose standing commands the test writes (as anyone who can write the
    control hash in Redis, or the control rows of a ledger)."""

    def __init__(self) -> None:
        self.wanted: dict[str, str] = {}
        self.published: list[dict[str, Any]] = []

    async def commands(self) -> dict[str, str]:
        return dict(self.wanted)

    async def publish(self, status: dict[str, Any]) -> None:
        self.published.append(status)


async def test_control_rate_is_capped_and_checked_by_the_run() -> None:
    """A rate written to the control channel: one under the run's ceiling is taken; one over
    it (1e18) is held at the ceiling; `inf`, `nan`, `0`, `-5` and text are ignored with a
    warning, the rate in force unchanged (status and limiter agree)."""
    limiter = RateLimiter(2.0, FakeClock())
    channel = _Channel()
    steering = Steering(channel, limiter, RunControl(), dict, ceiling=4.0)
    for written, expected in (
        ("3", 3.0), ("1e18", 4.0), ("inf", 4.0), ("nan", 4.0), ("0", 4.0), ("-5", 4.0),
        ("fast", 4.0), ("1.5", 1.5),
    ):  # fmt: skip
        channel.wanted["rate"] = written
        with capture_logs() as logs:
            await steering.step()
        assert limiter.rate_per_s == expected, written
        if written in ("inf", "nan", "0", "-5", "fast"):
            assert [e["event"] for e in logs] == ["control_rate_ignored"], written


async def test_a_ceiling_below_the_rate_is_refused(
    cli: Cli, sim: RunningSimulator, tmp_path: Path
) -> None:
    """`--max-rate 5 --rate 10`: exit 2 naming both, nothing sent."""
    env = sim_env(sim, tmp_path / "l.sqlite")
    src = write_ids(tmp_path / "o.csv", ids("CDE", 1))
    done = await cli.run("run", str(src), "--yes", "--rate", "10", "--max-rate", "5", env=env)
    assert done.code == 2
    assert "--max-rate 5 is below --rate 10" in done.stderr.strip().splitlines()[-1]
    assert sim.sim.stats.arrivals == []


async def test_a_deadline_passed_before_sending_sends_nothing(
    cli: Cli, sim: RunningSimulator, tmp_path: Path
) -> None:
    """`--until` a moment already past when sending would start: exit 4 naming it, no
    request sent, the orders left for the same command later."""
    env = sim_env(sim, tmp_path / "l.sqlite")
    src = write_ids(tmp_path / "o.csv", ids("CDE", 5))
    past = (datetime.now(UTC) - timedelta(seconds=1)).isoformat()
    done = await cli.run("run", str(src), "--yes", "--until", past, env=env)
    assert done.code == 4, done.stderr[-2000:]
    assert "deadline had passed before anything was sent" in done.stdout + done.stderr
    assert sim.sim.stats.arrivals == []


async def test_a_canary_that_covers_the_whole_input_ends_as_a_run(
    cli: Cli, sim: RunningSimulator, tmp_path: Path
) -> None:
    """`--canary 5` with three orders, one rejected: nothing is held back, so the run ends as
    any run does (exit 1, the rejected order in the report), not exit 4 "the rest were not
    sent"."""
    env = sim_env(sim, tmp_path / "l.sqlite")
    src = write_ids(tmp_path / "o.csv", ["CDE0000000001", "SUB0000000001", "CDE0000000002"])
    done = await cli.run("run", str(src), "--yes", "--canary", "5", env=env)
    assert done.code == 1, done.stderr[-2000:]
    assert "the rest were not sent" not in done.stderr
    assert len(sim.sim.stats.deletes) == 3


async def test_after_a_fatal_answer_the_next_step_is_to_fix_it(
    cli: Cli, sim: RunningSimulator, tmp_path: Path
) -> None:
    """A fatal answer (USER_ID_INVALID): the summary's next step says to fix what stopped the
    run before resuming, and so does the last line; a stop by a limit says only to resume."""
    env = sim_env(sim, tmp_path / "l.sqlite")
    src = write_ids(tmp_path / "o.csv", ["USR0000000001", *ids("CDE", 3)])
    done = await cli.run("run", str(src), "--yes", env=env)
    assert done.code == 3, done.stderr[-2000:]
    assert "next: first fix what stopped it (above), then resume with the same command" in (
        done.stdout
    )
    assert "fix that, then resume" in done.stderr.strip().splitlines()[-1]


async def test_ctrl_c_at_the_canary_question_ends_the_run(
    cli: Cli, sim: RunningSimulator, tmp_path: Path
) -> None:
    """On a terminal, a canary that is not clean asks whether to send the rest; Ctrl-C there
    ends the run at once (exit 130), the question unanswered, the rest `pending`."""
    ledger = tmp_path / "l.sqlite"
    src = write_ids(tmp_path / "o.csv", ["SUB0000000001", *ids("CDE", 10)])
    args = ("run", str(src), "--canary", "1")
    proc, master = await on_a_terminal(cli, args, sim_env(sim, ledger))
    try:
        assert proc.stderr is not None
        await read_until(proc.stderr, b"Type 'yes' to go on")
        os.write(master, b"yes\n")
        await read_until(proc.stderr, b"Type 'yes' to send the rest")
        proc.send_signal(signal.SIGINT)
        await asyncio.wait_for(proc.wait(), 30)
    finally:
        os.close(master)
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 130
    assert list(sim.sim.stats.deletes) == ["SUB0000000001"]
    assert {r["outcome"] for o, r in ledger_rows(ledger).items() if o != "SUB0000000001"} == {
        "pending"
    }


async def test_a_plan_shows_its_reviewer_the_predictions_and_the_reason(
    cli: Cli, sim: RunningSimulator, tmp_path: Path
) -> None:
    """`plan --check --reason R`: its summary gives the reason and the predicted outcome
    counts, not only a count and a digest."""
    env = sim_env(sim, tmp_path / "l.sqlite")
    src = write_ids(tmp_path / "o.csv", [*ids("CDE", 3), "NFD0000000001", "ALR0000000001"])
    done = await cli.run(
        "plan", str(src), "--check", "--output", str(tmp_path / "p.json"),
        "--reason", "T-1234 closed terminal", env=env,
    )  # fmt: skip
    assert done.code == 0, done.stderr[-2000:]
    assert "reason: T-1234 closed terminal" in done.stdout
    predicted = next(x for x in done.stdout.splitlines() if "predicted:" in x)
    assert "3 cancelled" in predicted
    assert "1 not_found" in predicted
    assert "1 already_cancelled" in predicted


async def test_orders_a_precondition_skips_are_no_failures(
    cli: Cli, sim: RunningSimulator, tmp_path: Path
) -> None:
    """Under `--require-status Draft,Valid --canary 3 --max-failure-rate 10 --min-orders 5`, an
    input that starts with five Submitted orders: they are skipped, which neither fails the
    canary nor counts toward the failure rate, and every Draft order is cancelled (exit 1:
    the skipped ones need a person)."""
    ledger = tmp_path / "l.sqlite"
    submitted = ids("SUB", 5)
    fine = ids("CDE", 20)
    src = write_ids(tmp_path / "o.csv", [*submitted, *fine])
    done = await cli.run(
        "run", str(src), "--yes", "--require-status", "Draft,Valid", "--canary", "3",
        "--max-failure-rate", "10", "--min-orders", "5", env=sim_env(sim, ledger),
    )  # fmt: skip
    assert done.code == 1, done.stderr[-2000:]
    rows = ledger_rows(ledger)
    assert {rows[o]["outcome"] for o in submitted} == {"skipped"}
    assert {rows[o]["outcome"] for o in fine} == {"cancelled"}
    assert sorted(sim.sim.stats.deletes) == fine


async def test_a_resume_with_a_canary_sends_untried_orders_first(
    cli: Cli, sim: RunningSimulator, tmp_path: Path
) -> None:
    """Orders an earlier run tried and left (`retryable_failed`: they always answer 400
    CONFLICT) come first in the input; the same command again with `--canary 3` makes its
    canary of orders no run tried, and sends the left ones after it: no canary stop, no loop;
    every good order ends cancelled (exit 1: the bad ones are retryable_failed again)."""
    ledger = tmp_path / "l.sqlite"
    # a last digit 0: a CONFLICT every time (a failure of the order, not of the API: 500s from
    # a few orders, last in the run, would look like an outage to the circuit breaker)
    bad = [f"CFL{n:09d}0" for n in range(1, 4)]
    good = ids("CDE", 40)
    src = write_ids(tmp_path / "o.csv", [*bad, *good])
    env = sim_env(sim, ledger, MOUVONE_RATE="20", MOUVONE_CONCURRENCY="2",
                  MOUVONE_MAX_ATTEMPTS="1")  # fmt: skip
    first = await cli.run("run", str(src), "--yes", "--run-time", "1s", env=env)
    assert first.code == 4, first.stderr[-2000:]
    rows = ledger_rows(ledger)
    assert all(rows[o]["attempts"] >= 1 for o in bad)  # tried: left pending or failed
    assert "pending" in {rows[o]["outcome"] for o in good}
    again = await cli.run("run", str(src), "--yes", "--canary", "3", env=env)
    assert again.code == 1, again.stderr[-2000:]
    assert "canary:" not in again.stdout + again.stderr
    rows = ledger_rows(ledger)
    assert {rows[o]["outcome"] for o in good} == {"cancelled"}
    assert {rows[o]["outcome"] for o in bad} == {"retryable_failed"}


async def test_a_resume_judges_its_own_orders_before_the_ones_left_to_it(
    cli: Cli, sim: RunningSimulator, tmp_path: Path
) -> None:
    """Orders an earlier run tried and left (`retryable_failed`: they always answer 400
    CONFLICT) come first in the input; a run with `--max-failure-rate 10` sends the orders no
    run tried first and the left ones after them, so the brake judges the run by its own
    orders (5 failed of 50, not over 10%) instead of stopping it on its first answers (5 of
    the first 5), as it did every time the same command was run again."""
    ledger = tmp_path / "l.sqlite"
    bad = [f"CFL{n:09d}0" for n in range(1, 6)]  # a last digit 0: a CONFLICT every time
    good = ids("CDE", 45)
    env = sim_env(sim, ledger, MOUVONE_CONCURRENCY="1", MOUVONE_MAX_ATTEMPTS="1")
    first = await cli.run("run", str(write_ids(tmp_path / "bad.csv", bad)), "--yes", env=env)
    assert first.code == 1, first.stderr[-2000:]
    assert {ledger_rows(ledger)[o]["outcome"] for o in bad} == {"retryable_failed"}
    sent_before = len(sim.sim.stats.journal)
    src = write_ids(tmp_path / "o.csv", [*bad, *good])
    flags = ("--max-failure-rate", "10", "--min-orders", "5")
    again = await cli.run("run", str(src), "--yes", *flags, env=env)
    assert again.code == 1, again.stderr[-2000:]
    assert "max-failure-rate" not in again.stderr
    rows = ledger_rows(ledger)
    assert {rows[o]["outcome"] for o in good} == {"cancelled"}
    journal = sim.sim.stats.journal[sent_before:]
    deletes = [order for method, order, _, _ in journal if method == "DELETE"]
    assert sorted(deletes[-len(bad) :]) == bad, deletes


async def test_a_resume_with_only_tried_orders_and_a_canary_larger_than_the_workers(
    cli: Cli, sim: RunningSimulator, tmp_path: Path
) -> None:
    """The same command again when every order left was tried by an earlier run, with
    `--canary` larger than `--concurrency`: no order is fresh, so the canary is empty and the
    tried orders go (it waited for canary slots no worker would ever take, sending nothing)."""
    ledger = tmp_path / "l.sqlite"
    bad = [f"CFL{n:09d}0" for n in range(1, 4)]  # a CONFLICT every time: retryable_failed
    src = write_ids(tmp_path / "o.csv", [*bad, *ids("CDE", 5)])
    env = sim_env(sim, ledger, MOUVONE_CONCURRENCY="2", MOUVONE_MAX_ATTEMPTS="1")
    first = await cli.run("run", str(src), "--yes", env=env)
    assert first.code == 1, first.stderr[-2000:]
    sent = sum(sim.sim.stats.deletes.values())
    again = await cli.run("run", str(src), "--yes", "--canary", "5", env=env, timeout=30)
    assert again.code == 1, again.stderr[-2000:]
    assert "canary:" not in again.stdout + again.stderr
    assert sum(sim.sim.stats.deletes.values()) == sent + len(bad)
    assert {ledger_rows(ledger)[o]["outcome"] for o in bad} == {"retryable_failed"}


async def test_the_progress_names_the_canary_and_a_request_waiting(
    cli: Cli, make_sim: Any, tmp_path: Path
) -> None:
    """While a canary waits on one order the API takes 20 s to answer, the progress (the line
    on a terminal, the `progress` event off one) and `control status` say how far the canary is
    and that a request has waited over 10 s, not only "0.0 req/s" (10 s in which to see it:
    a `control status` may take seconds to start on a busy machine)."""
    running = await make_sim(stall_s=20)
    cde = ids("CDE", 5)  # the first answer proves the credentials: the others go at once
    orders = [cde[0], "SLO0000000001", *cde[1:]]
    env = sim_env(running, tmp_path / "l.sqlite", MOUVONE_PROGRESS_INTERVAL="0.2")
    src = write_ids(tmp_path / "o.csv", orders)
    proc = await cli.start("run", str(src), "--yes", "--canary", "5", env=env)
    assert proc.stderr is not None
    stages: list[str] = []
    while not any("waiting over 10 s" in stage for stage in stages):
        line = await asyncio.wait_for(proc.stderr.readline(), 30)
        assert line, stages
        if line.startswith(b"{") and (event := json.loads(line))["event"] == "progress":
            stages.append(event["stage"])
    assert stages[-1].startswith("canary 4/5, 1 waiting over 10 s"), stages
    said = ""
    for _ in range(20):  # the same stage there, published every half second: the next one
        status = await cli.run("control", "status", env=env)
        said = status.stdout + status.stderr
        if "canary 4/5, 1 waiting over 10 s" in said:
            break
    assert "canary 4/5, 1 waiting over 10 s" in said, said
    _, rest = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, rest.decode()[-2000:]


async def test_an_outage_during_look_ups_holds_the_orders_instead_of_failing_them(
    cli: Cli, make_sim: Any, tmp_path: Path
) -> None:
    """--require-status and a 3-s outage (every request answers 503): the look-ups' failures
    open the breaker as the DELETEs' do, and the orders wait for the API instead of ending
    `retryable_failed` ("its status could not be read"), which counted toward
    --max-failure-rate and stopped a night with exit 3."""
    running = await make_sim(latency_ms=5)
    wanted = ids("CDE", 150)
    env = sim_env(running, tmp_path / "l.sqlite", MOUVONE_RATE="100")
    src = write_ids(tmp_path / "o.csv", wanted)
    proc = await cli.start("run", str(src), "--yes", "--require-status", "Draft,Valid",
                           "--max-failure-rate", "5", env=env)  # fmt: skip
    await asyncio.wait_for(running.sim.wait_for_deletes(20), 30)
    running.sim.outage(3)
    _, err = await asyncio.wait_for(proc.communicate(), 90)
    assert proc.returncode == 0, err.decode()[-2000:]
    rows = ledger_rows(tmp_path / "l.sqlite")
    assert Counter(r["outcome"] for r in rows.values()) == {"cancelled": len(wanted)}
    assert running.sim.stats.outage_answers > 0
