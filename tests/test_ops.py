"""Metrics read from a textfile after a run, pushed to a (fake) Pushgateway, and scraped from
a running consumer; the HTML report opened in a real headless Chromium."""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from tests.support import Cli, Queue, ledger_rows, sim_env, unavailable, write_ids
from worker.simulator import RunningSimulator

MIXED = ["CDE0000000001", "CDE0000000002", "CDE0000000003", "NFD0000000001", "CTR0000000001",
         "TMP0000000001", "bad-id"]  # fmt: skip


def samples(
    text: str, job: str | None = None
) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """(sample name, sorted labels but the job) -> value, from the Prometheus text format;
    every sample carries a job label (``job``, when given)."""
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = dict(sample.labels)
            named = labels.pop("job", None)
            assert named, sample
            assert job is None or named == job, (sample, job)
            found[sample.name, tuple(sorted(labels.items()))] = sample.value
    return found


def free_port() -> int:
    """A loopback port nobody listens on (now)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_metrics_textfile_after_a_run(
    cli: Cli, sim: RunningSimulator, tmp_path: Path
) -> None:
    """--metrics-textfile: outcomes by outcome and code, requests by status, latency, retries,
    token refreshes; readable by node-exporter (mode 0644)."""
    prom = tmp_path / "cancel_orders.prom"
    src = write_ids(tmp_path / "o.csv", MIXED)
    done = await cli.run(
        "run", str(src), "--yes", "--metrics-textfile", str(prom),
        env=sim_env(sim, tmp_path / "l.sqlite"),
    )  # fmt: skip
    assert done.code == 1, done.stderr
    assert prom.stat().st_mode & 0o777 == 0o644
    found = samples(prom.read_text(), job="run-o")  # the command and the input's name
    outcome = "cancel_orders_outcomes_total"
    assert found[(outcome, (("error_code", ""), ("outcome", "cancelled")))] == 4
    assert found[(outcome, (("error_code", "CUSTOMER_ORDER_NOT_FOUND"), ("outcome", "not_found")))]
    assert found[(outcome, (("error_code", "WRONG_FORMAT"), ("outcome", "invalid")))] == 1
    assert found[("cancel_orders_requests_total", (("status", "503"),))] == 1
    assert found[("cancel_orders_requests_total", (("status", "200"),))] == 4
    assert found[("cancel_orders_request_duration_seconds_count", ())] == 7
    assert found[("cancel_orders_retries_total", (("reason", "retry"),))] == 1
    assert found[("cancel_orders_token_refreshes_total", ())] == 1
    assert found[("cancel_orders_requests_in_flight", ())] == 0
    assert found[("cancel_orders_last_run_exit_code", ())] == 1  # finished: a success
    ended = found[("cancel_orders_last_run_end_timestamp_seconds", ())]
    assert found[("cancel_orders_last_success_timestamp_seconds", ())] == ended
    failed = await cli.run(
        "run", str(src), "--yes", "--force", "--metrics-textfile", str(prom),
        env=sim_env(sim, tmp_path / "l.sqlite", MOUVONE_BASE_URL=sim.base_url + "/wrong"),
    )  # fmt: skip
    assert failed.code == 2, failed.stderr[-2000:]  # another target for this ledger
    again = samples(prom.read_text(), job="run-o")
    assert again[("cancel_orders_last_run_exit_code", ())] == 2
    assert again[("cancel_orders_last_run_end_timestamp_seconds", ())] > ended
    assert again[("cancel_orders_last_success_timestamp_seconds", ())] == ended


async def test_metrics_pushed_to_a_pushgateway(
    cli: Cli, sim: RunningSimulator, tmp_path: Path
) -> None:
    """--pushgateway URL: the run's metrics are pushed once at the end, grouped by job and
    command."""
    pushed: list[tuple[str, str, bytes]] = []

    async def receive(request: web.Request) -> web.Response:
        pushed.append((request.method, request.path, await request.read()))
        return web.Response(status=200)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", receive)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        src = write_ids(tmp_path / "o.csv", MIXED[:2])
        done = await cli.run(
            "run", str(src), "--yes", "--pushgateway", f"http://127.0.0.1:{port}",
            env=sim_env(sim, tmp_path / "l.sqlite"),
        )  # fmt: skip
    finally:
        await runner.cleanup()
    assert done.code == 0, done.stderr
    assert len(pushed) == 1
    method, path, body = pushed[0]
    # POST: the families pushed replace theirs only, so a failed run keeps the last success
    assert (method, path) == ("POST", "/metrics/job/run-o/command/run")
    assert b'cancel_orders_last_run_exit_code{job="run-o"} 0.0' in body
    assert b"cancel_orders_last_success_timestamp_seconds" in body
    assert (
        b'cancel_orders_outcomes_total{error_code="",job="run-o",outcome="cancelled"} 2.0' in body
    )


async def test_consumer_serves_metrics_and_health(
    queue: Queue,
    cli: Cli,
    make_sim: Any,
    tmp_path: Path,
) -> None:
    """consume --metrics-port: /metrics while it works, /healthz 200 until it stops."""
    running = await make_sim()
    env = queue.env(running, tmp_path)
    src = write_ids(tmp_path / "o.csv", [f"CDE{n:010d}" for n in range(1, 31)])
    assert (await cli.run("enqueue", "--yes", str(src), env=env)).code == 0
    port = free_port()
    proc = await cli.start("consume", "--metrics-port", str(port), env=env)
    try:
        await asyncio.wait_for(running.sim.wait_for_deletes(30), 30)
        url = f"http://127.0.0.1:{port}"
        async with aiohttp.ClientSession() as session:
            for _ in range(100):  # the last results are being acknowledged
                async with session.get(url + "/metrics") as resp:
                    assert resp.status == 200
                    text = await resp.text()
                key = (
                    "cancel_orders_outcomes_total",
                    (("error_code", ""), ("outcome", "cancelled")),
                )
                if samples(text).get(key) == 30:
                    break
                await asyncio.sleep(0.05)
            assert samples(text)[key] == 30
            async with session.get(url + "/healthz") as resp:
                assert (resp.status, await resp.text()) == (200, "ok\n")
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 143


class _Dom(HTMLParser):
    """What the browser's DOM holds: element ids, bar counts, table rows, external links."""

    def __init__(self) -> None:
        super().__init__()
        self.ids: set[str] = set()
        self.bars: dict[str, int] = {}
        self.external: list[str] = []
        self.polylines = 0
        self.rows: dict[str, int] = {}
        self._table: str | None = None
        self.text: list[str] = []
        self.groups: dict[str, int] = {}  # error code -> orders, of the groups needing a person
        self.ticks: list[str] = []  # the time axes' labels
        self._tick = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if a.get("id"):
            self.ids.add(str(a["id"]))
        if tag == "table":
            self._table = a.get("id")
        if tag == "tr" and self._table:
            self.rows[self._table] = self.rows.get(self._table, 0) + 1
        if tag == "details" and a.get("data-code"):
            self.groups[str(a["data-code"])] = int(str(a["data-count"]))
        self._tick = tag == "text" and a.get("class") == "tick"
        if tag == "g" and a.get("data-outcome"):
            self.bars[str(a["data-outcome"])] = int(str(a["data-count"]))
        if tag == "polyline":
            self.polylines += 1
        for key in ("src", "href"):
            if a.get(key):
                self.external.append(str(a[key]))

    def handle_endtag(self, tag: str) -> None:
        if tag == "table":
            self._table = None

    def handle_data(self, data: str) -> None:
        self.text.append(data)
        if self._tick:
            self.ticks.append(data)
            self._tick = False


async def test_html_report_in_headless_chromium(
    cli: Cli, sim: RunningSimulator, tmp_path: Path
) -> None:
    """report --format html --output: one owner-only file that Chromium opens with nothing to
    fetch, showing the outcome chart, the error codes, throughput and error rate over time, and
    the orders that need a person."""
    if shutil.which("chromium") is None:
        unavailable("Debian's chromium is not installed (.ci/run installs it)")
    ledger = tmp_path / "l.sqlite"
    env = sim_env(sim, ledger)
    src = write_ids(tmp_path / "o.csv", MIXED)
    assert (await cli.run("run", str(src), "--yes", env=env)).code == 1
    page = tmp_path / "report.html"
    done = await cli.run("report", "--format", "html", "--output", str(page), env=env)
    assert done.code == 0, done.stderr
    assert page.stat().st_mode & 0o777 == 0o600
    browser = await asyncio.to_thread(
        subprocess.run,
        ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom",
         "--host-resolver-rules=MAP * ~NOTFOUND", page.as_uri()],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert browser.returncode == 0, browser.stderr[-2000:]
    dom = _Dom()
    dom.feed(browser.stdout)
    rows = ledger_rows(ledger)
    expected: dict[str, int] = {}
    for row in rows.values():
        expected[row["outcome"]] = expected.get(row["outcome"], 0) + 1
    assert {k: v for k, v in dom.bars.items() if v} == expected
    assert {
        "summary",
        "total",
        "outcomes",
        "error-codes",
        "timeline",
        "attention",
        "run",
    } <= dom.ids
    assert dom.rows["error-codes"] == 1 + 3  # header, NOT_FOUND, CONTAINER, WRONG_FORMAT
    # the not_found, rejected and invalid orders: one group each, header and one row
    assert dom.groups == {
        "CUSTOMER_ORDER_NOT_FOUND": 1,
        "CANNOT_CANCEL_ORDER_WITH_ASSOCIATED_CONTAINER": 1,
        "WRONG_FORMAT": 1,
    }
    assert sum(n for t, n in dom.rows.items() if t.startswith("attention-")) == 3 * (1 + 1)
    assert "Release the container from its booking" in " ".join(dom.text)  # what to do next
    assert len(dom.ticks) >= 4  # both charts: clock times along the time axis
    assert all(len(t) == 8 and t[2] == ":" for t in dom.ticks)
    assert dom.polylines == 2  # throughput and error rate
    assert dom.external == []
    text = " ".join(dom.text)
    assert "CTR0000000001" in text
    assert "CANNOT_CANCEL_ORDER_WITH_ASSOCIATED_CONTAINER" in text


async def test_two_jobs_on_one_host_never_share_a_series(
    cli: Cli, sim: RunningSimulator, tmp_path: Path
) -> None:
    """Two nightly jobs (two inputs, and a --job given) write their textfiles side by side:
    read together as node-exporter's collector reads them, no series appears twice, and each
    job's exit status is its own."""
    env = sim_env(sim, tmp_path / "l.sqlite")
    first = write_ids(tmp_path / "drafts.csv", MIXED[:2])
    second = write_ids(tmp_path / "closed.csv", ["CDE0000000009"])
    one, two = tmp_path / "drafts.prom", tmp_path / "closed.prom"
    done = await cli.run("run", str(first), "--yes", "--metrics-textfile", str(one), env=env)
    assert done.code == 0, done.stderr[-2000:]
    done = await cli.run(
        "run", str(second), "--yes", "--job", "terminal-closure", "--metrics-textfile", str(two),
        env=sim_env(sim, tmp_path / "other.sqlite", MOUVONE_BASE_URL=sim.base_url + "/wrong"),
    )  # fmt: skip
    assert done.code != 0
    together = one.read_text() + two.read_text()
    seen = [
        (s.name, tuple(sorted(s.labels.items())))
        for family in text_string_to_metric_families(together)
        for s in family.samples
    ]
    assert len(seen) == len(set(seen))
    exits = {
        s.labels["job"]: s.value
        for family in text_string_to_metric_families(together)
        for s in family.samples
        if s.name == "cancel_orders_last_run_exit_code"
    }
    assert exits["run-drafts"] == 0
    assert exits["terminal-closure"] == done.code
