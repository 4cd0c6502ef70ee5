"""Audit and history, through the CLI against the simulator: the attempt log holds one row per
request the API saw, runs record who ran them and why, `runs`, `history`, `audit`, `prune` and
`report --run` read them back."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import os
import pty
import signal
from pathlib import Path
from typing import Any

from tests.support import Cli, Queue, Receiver, ids, sim_env, table_rows, write_ids
from worker.reports.history import write_runs
from worker.simulator import RunningSimulator


def attempt_rows(ledger: Path | str) -> list[dict[str, Any]]:
    return table_rows(ledger, "SELECT * FROM attempts ORDER BY written")


async def test_the_attempt_log_is_the_requests_the_api_saw(
    cli: Cli, sim: RunningSimulator, tmp_path: Path, ledger_location: str
) -> None:
    """A mixed batch (cancelled, refused, 503 twice then cancelled, a reset connection, a
    conflict, looked up before sending): one attempt row per request the simulator received,
    matched one for one by the X-Request-ID sent, with the simulator's own id and the run's
    who and why."""
    ledger = ledger_location
    wanted = [*ids("CDE", 4), "ALR0000000001", "NFD0000000001", "SUB0000000001"]
    wanted += ["TMP0000000002", "RST0000000001", "CFL0000000001"]
    src = write_ids(tmp_path / "o.csv", wanted)
    env = sim_env(sim, ledger)
    done = await cli.run(
        "run", str(src), "--yes", "--operator", "alice", "--reason", "bad import",
        "--ticket", "CHG-42", env=env,
    )  # fmt: skip
    assert done.code == 1, done.stderr[-2000:]
    rows = attempt_rows(ledger)
    journal = sim.sim.stats.journal
    assert len(rows) == len(journal) == sum(sim.sim.stats.deletes.values())
    seen = {request_id: (method, order, own) for method, order, request_id, own in journal}
    assert len(seen) == len(journal)  # every request had its own id
    for row in rows:
        method, order, own = seen[row["request_id"]]
        assert (row["method"], row["order_id"]) == (method, order)
        trace = str(row["request_id"]).replace("-", "")  # W3C: the same 128 bits
        assert sim.sim.stats.traceparents[row["request_id"]] == f"00-{trace}-{trace[16:]}-01"
        if row["http_status"] is not None:  # a reset connection has no answer, so no id
            assert row["response_id"] == own
    tmp = [r for r in rows if r["order_id"] == "TMP0000000002"]
    assert [(r["attempt"], r["http_status"]) for r in tmp] == [(1, 503), (2, 503), (3, 200)]
    reset = [r for r in rows if r["order_id"] == "RST0000000001"]
    assert reset[0]["http_status"] is None
    assert reset[0]["error_code"] == "CONNECTION_ERROR"
    sub = next(r for r in rows if r["order_id"] == "SUB0000000001")
    assert (sub["http_status"], sub["error_code"]) == (400, "R0008")
    (run,) = table_rows(ledger, "SELECT operator, reason, ticket, details, host FROM runs")
    attempts = {r["order_id"]: r["attempts"] for r in table_rows(ledger, "SELECT * FROM orders")}
    assert (run["operator"], run["reason"], run["ticket"]) == ("alice", "bad import", "CHG-42")
    assert run["host"]
    details = json.loads(run["details"])
    assert details["input"]["lines"] == len(wanted) + 1
    assert len(details["input"]["sha256"]) == 64
    assert details["limits"]["rate"] == 200
    assert "MOUVONE" not in details["command_line"]
    # the order rows and the attempt log agree
    for order, count in attempts.items():
        assert count == sum(1 for r in rows if r["order_id"] == order and r["method"] == "DELETE")


async def test_history_runs_audit_and_prune_read_it_back(
    cli: Cli, sim: RunningSimulator, tmp_path: Path, ledger_location: str
) -> None:
    """An order retried across three runs by three people: `history` shows every attempt in
    order with each run's operator and reason; `runs` lists the three, newest first;
    `report --run` the first run's orders; `audit` exports the log as JSON lines and CSV,
    for one run or from a date; `prune` deletes old attempt rows and keeps the orders."""
    ledger = ledger_location
    src = write_ids(tmp_path / "o.csv", ["TMP0000000002", *ids("CDE", 3)])
    env = sim_env(sim, ledger, MOUVONE_MAX_ATTEMPTS="1")
    steps = [("run", str(src)), ("retry",), ("retry",)]
    for n, (step, who) in enumerate(zip(steps, ("ann", "bob", "cy"), strict=True)):
        done = await cli.run(*step, "--yes", "--operator", who, "--reason", f"try {n + 1}", env=env)
        assert done.code == (0 if n == 2 else 1), done.stderr[-2000:]
    shown = await cli.run("history", "TMP0000000002", "--format", "json", env=env)
    assert shown.code == 0, shown.stderr
    history = json.loads(shown.stdout)
    assert history["current"]["outcome"] == "cancelled"
    tries = [
        (a["operator"], a["reason"], a["method"], a["http_status"]) for a in history["attempts"]
    ]
    # a retry looks up first an order an earlier request may have reached (its GET is logged)
    assert tries == [
        ("ann", "try 1", "DELETE", 503),
        ("bob", "try 2", "GET", 200),
        ("bob", "try 2", "DELETE", 503),
        ("cy", "try 3", "GET", 200),
        ("cy", "try 3", "DELETE", 200),
    ]
    table = await cli.run("history", "TMP0000000002", env=env)
    assert "by bob, reason: try 2" in table.stdout
    assert (await cli.run("history", "CDE0000000009", env=env)).code == 1  # never seen

    runs = json.loads((await cli.run("runs", "--format", "json", env=env)).stdout)
    assert [r["operator"] for r in runs] == ["cy", "bob", "ann"]
    assert [r["command"] for r in runs] == ["retry", "retry", "run"]
    assert runs[2]["outcomes"] == {"cancelled": 3, "retryable_failed": 1}
    assert runs[0]["exit_code"] == 0
    listed = await cli.run("runs", env=env)
    assert "by ann" in listed.stdout
    assert "reason: try 1" in listed.stdout
    assert len(listed.stdout.splitlines()) == 9  # three lines a run, none escaped into one
    assert "\\x0a" not in listed.stdout

    first = runs[2]["run_id"]
    report = await cli.run("report", "--run", first, "--format", "csv", env=env)
    assert report.code == 0, report.stderr
    assert len(report.stdout.strip().splitlines()) == 5  # header and the 4 orders it sent
    table = await cli.run("report", "--run", first, env=env)
    assert table.stdout.splitlines()[0].startswith(f"{first}  run  exit 1  by ann"), table.stdout
    refused = await cli.run("report", "--run", "nope", env=env)
    assert refused.code == 2
    assert "no run 'nope'" in refused.stderr

    exported = await cli.run("audit", env=env)
    lines = [json.loads(line) for line in exported.stdout.splitlines()]
    assert len(lines) == 8
    assert all(a["trace_id"] == a["request_id"].replace("-", "") for a in lines)
    assert sorted(a["method"] for a in lines).count("GET") == 2
    one = await cli.run("audit", "--run", first, "--format", "csv", env=env)
    assert len(list(csv.DictReader(io.StringIO(one.stdout)))) == 4
    later = await cli.run("audit", "--since", "2999-01-01", env=env)
    assert later.code == 0
    assert later.stdout == ""
    bad = await cli.run("audit", "--since", "yesterday", env=env)
    assert bad.code == 2
    assert "--since" in bad.stderr

    kept = await cli.run("prune", "--older-than", "1h", env=env)
    assert kept.code == 0
    assert kept.stdout.startswith("0 attempt rows")
    pruned = await cli.run("prune", "--older-than", "0s", env=env)
    assert pruned.stdout.startswith("8 attempt rows"), pruned.stdout
    assert attempt_rows(ledger) == []
    after = json.loads(
        (await cli.run("history", "TMP0000000002", "--format", "json", env=env)).stdout
    )
    assert after["current"]["outcome"] == "cancelled"
    assert after["attempts"] == []


async def test_one_notification_per_run_whatever_its_end(
    cli: Cli, make_sim: Any, tmp_path: Path, receiver: tuple[Receiver, str]
) -> None:
    """--notify-url: exactly one POST per run, with the run's counts, its who and why and a
    human text, after exit 1 (retried past a 503 of the webhook), exit 3 (a fatal answer) and
    exit 130 (SIGINT); --on-finish gets the same JSON on its stdin, without the secrets in its
    environment; none of it changes the exit status."""
    hook, url = receiver
    running = await make_sim()
    ledger = tmp_path / "l.sqlite"
    hook.fail_first = 1
    finish = tmp_path / "finish.json"
    env = sim_env(
        running,
        ledger,
        MOUVONE_NOTIFY_URL=url,
        MOUVONE_REASON="closed terminal",
        MOUVONE_ON_FINISH=f"cat > {finish}; env | grep -c ^MOUVONE_CLIENT_SECRET= >> {finish}.env",
    )
    src = write_ids(tmp_path / "a.csv", [*ids("CDE", 5), "SUB0000000001"])
    done = await cli.run("run", str(src), "--yes", "--ticket", "INC-7", env=env)
    assert done.code == 1, done.stderr[-2000:]
    assert len(hook.bodies) == 1
    sent = hook.bodies[0]
    assert sent["exit_code"] == 1
    assert sent["command"] == "run"
    assert sent["outcomes"] == {"cancelled": 5, "rejected": 1}
    assert sent["error_codes"] == {"R0008": 1}
    assert (sent["reason"], sent["ticket"]) == ("closed terminal", "INC-7")
    assert sent["needing_a_person"][0]["order_id"] == "SUB0000000001"
    assert "exit 1" in sent["text"]
    assert "5 cancelled" in sent["text"]
    assert running.sim.config.client_secret not in json.dumps(sent)
    assert json.loads(finish.read_text())["run_id"] == sent["run_id"]
    assert (tmp_path / "finish.json.env").read_text().strip() == "0"

    fatal = write_ids(tmp_path / "b.csv", ["USR0000000001", *ids("CDE", 3, start=10)])
    done = await cli.run("run", str(fatal), "--yes", env={**env, "MOUVONE_ON_FINISH": "exit 9"})
    assert done.code == 3
    assert len(hook.bodies) == 2
    assert hook.bodies[1]["exit_code"] == 3

    running.sim.config.latency_ms = 200
    many = write_ids(tmp_path / "c.csv", ids("CDE", 200, start=100))
    proc = await cli.start("run", str(many), "--yes", "--concurrency", "4", env=env)
    await asyncio.wait_for(running.sim.wait_for_deletes(12), 30)
    proc.send_signal(signal.SIGINT)
    await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 130
    assert len(hook.bodies) == 3
    interrupted = hook.bodies[2]
    assert interrupted["exit_code"] == 130
    assert interrupted["outcomes"]["pending"] > 100

    bad = await cli.run(
        "run", str(src), "--yes", env={**env, "MOUVONE_NOTIFY_URL": "http://example.com/x"}
    )
    assert bad.code == 2
    assert "https" in bad.stderr
    assert len(hook.bodies) == 3


def _read_all(fd: int) -> bytes:
    """Everything written to a pseudo-terminal until its last writer closed it."""
    chunks = []
    while True:
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # EIO: no writer left
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


async def test_log_file_keeps_the_terminal_for_people(
    cli: Cli, sim: RunningSimulator, tmp_path: Path
) -> None:
    """--log-file on a terminal: every event goes to the file as JSON; the terminal shows the
    progress line and the summary table once (no key=value dump of it, which counts the order
    that needs a person), not a line per order. Off a terminal, the JSON events stay on
    stderr."""
    ledger = tmp_path / "l.sqlite"
    log_file = tmp_path / "run.log"
    wanted = [*ids("CDE", 40), "SUB0000000001"]
    src = write_ids(tmp_path / "o.csv", wanted)
    env = {**sim_env(sim, ledger), "MOUVONE_LOG_FORMAT": "", "TERM": "xterm", "COLUMNS": "160"}
    del env["MOUVONE_LOG_FORMAT"]
    master, slave = pty.openpty()
    proc = await asyncio.create_subprocess_exec(
        *cli.program, "run", str(src), "--yes", "--log-file", str(log_file),
        cwd=cli.cwd, env=env, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=slave,
    )  # fmt: skip
    os.close(slave)
    reading = asyncio.create_task(asyncio.to_thread(_read_all, master))
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    terminal = (await asyncio.wait_for(reading, 30)).decode(errors="replace")
    os.close(master)
    assert proc.returncode == 1
    events = [json.loads(line) for line in log_file.read_text().splitlines()]
    orders = [e for e in events if e["event"] == "order"]
    assert sorted(e["order_id"] for e in orders) == sorted(wanted)
    assert any(e["event"] == "run_summary" for e in events)
    assert "SUB0000000001" not in terminal  # needs a person: counted in the summary
    assert "CDE0000000001" not in terminal  # in the file only
    assert "rejected" in out.decode()
    assert "run_summary" not in terminal
    assert out.decode().count("cancelled") >= 1
    assert out.decode().count("Run ") == 1

    plain = await cli.run("run", str(src), "--yes", "--force", "--log-file", str(log_file),
                          env=sim_env(sim, ledger))  # fmt: skip
    on_stderr = [json.loads(line) for line in plain.stderr.splitlines() if line.startswith("{")]
    assert sum(e["event"] == "order" for e in on_stderr) == len(wanted)
    assert sum(
        json.loads(line)["event"] == "order" for line in log_file.read_text().splitlines()
    ) == 2 * len(wanted)


async def test_queue_mode_results_carry_their_attempts(
    queue: Queue, cli: Cli, sim: RunningSimulator, tmp_path: Path
) -> None:
    """consume: each result entry carries its attempts as JSON, so `history` and `audit` over
    --redis-url answer for consumed orders as they do from a ledger: one attempt per request the
    simulator saw, by request id."""
    env = queue.env(sim, tmp_path)
    wanted = [*ids("CDE", 5), "TMP0000000002", "SUB0000000001"]
    enqueued = await cli.run(
        "enqueue", "--yes", str(write_ids(tmp_path / "o.csv", wanted)), env=env
    )
    assert enqueued.code == 0, enqueued.stderr
    done = await cli.run("consume", "--exit-when-empty", env=env)
    assert done.code == 1, done.stderr[-2000:]
    shown = await cli.run("history", "TMP0000000002", "--format", "json", env=env)
    assert shown.code == 0, shown.stderr
    tries = [
        (a["method"], a["attempt"], a["http_status"]) for a in json.loads(shown.stdout)["attempts"]
    ]
    assert tries == [("DELETE", 1, 503), ("DELETE", 2, 503), ("DELETE", 3, 200)]
    exported = await cli.run("audit", env=env)
    rows = [json.loads(line) for line in exported.stdout.splitlines()]
    journal = {request_id: own for _method, _order, request_id, own in sim.sim.stats.journal}
    assert len(rows) == len(journal) == 9
    assert {r["request_id"]: r["response_id"] for r in rows} == journal


def test_a_runs_line_breaks_where_it_should_and_nowhere_else() -> None:
    """`runs` as a table: three lines a run; a newline inside a reason is shown escaped, so a
    reason cannot forge a line of its own."""
    run = {"run_id": "R1", "command": "run", "exit_code": 0, "operator": "ann", "host": "h",
           "reason": "bad\nR2  run  exit 0", "started_at": "t0", "finished_at": "t1",
           "requests": 2, "outcomes": {"cancelled": 2}}  # fmt: skip
    out = io.StringIO()
    write_runs([run], out, "table")
    lines = out.getvalue().splitlines()
    assert len(lines) == 3
    assert lines[0] == "R1  run  exit 0  by ann on h"
    assert lines[2] == "  2 requests: cancelled 2  reason: bad\\x0aR2  run  exit 0"
