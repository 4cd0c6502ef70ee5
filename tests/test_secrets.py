"""Secrets stay secret, plans stay sealed, every token answer is read whole: one regression
test for each finding of the security review, through the CLI against the simulator or a
hostile API look-alike on loopback wherever a user would meet it."""

from __future__ import annotations

import asyncio
import csv
import functools
import hashlib
import io
import json
import os
import sqlite3
import ssl
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import trustme
from aiohttp import web

from tests.support import (
    Cli,
    Queue,
    Receiver,
    fixed_token,
    ids,
    ledger_rows,
    lookalike_env,
    sim_env,
    write_ids,
)
from worker.api.client import OrderUrls, _parse
from worker.cli.common import masked_command_line
from worker.domain.credentials import host_only, mask_url, url_secrets
from worker.queue.steering import keys
from worker.reports.notify import payload, text
from worker.runtime.redaction import redact
from worker.settings import load_settings
from worker.simulator import RunningSimulator
from worker.sources import plan as plans

Serve = Callable[[dict[str, Any]], Awaitable[str]]
ESC = "\x1b"


def _seen(done: Any) -> str:
    return done.stdout + done.stderr


# 1. A PostgreSQL password given as ?password=


def test_every_url_credential_form_is_found_and_masked() -> None:
    """Userinfo, libpq's ?password= and ?sslpassword=, a SAS sig, a token and a key: each one
    is a secret to redact, and masked where the URL is shown; a webhook shows its host."""
    url = (
        "postgresql://ops:pw-user-info@db.example/ledger?sslmode=require&password=pw-in-query"
        "&sslpassword=pw-ssl&options=-csearch_path%3Dx"
    )
    assert {"pw-user-info", "pw-in-query", "pw-ssl"} <= set(url_secrets(url))
    shown = mask_url(url)
    assert not any(s in shown for s in ("pw-user-info", "pw-in-query", "pw-ssl"))
    assert "sslmode=require" in shown
    assert "options=-csearch_path%3Dx" in shown
    sas = "https://acct.blob.example/c?sv=2024&sig=abc%2Fdef&token=t0k&Key=k3y"
    assert {"abc%2Fdef", "abc/def", "t0k", "k3y"} <= set(url_secrets(sas))
    assert host_only("https://hooks.slack.com/services/T0/B0/XYZ") == "https://hooks.slack.com/***"


def test_the_settings_know_every_secret_they_hold(tmp_path: Path) -> None:
    """A ledger URL's ?password=, proxy and Pushgateway userinfo, a Redis password, the plan
    key and the webhook URL are all redacted; the webhook shows as its host."""
    settings = load_settings(
        {
            "ledger": "postgresql://postgres@127.0.0.1/db?password=pg-query-pass",
            "proxy": "http://u:proxy-pass@127.0.0.1:3128",
            "pushgateway": "https://u:push-pass@127.0.0.1:9091",
            "redis_url": "redis://:redis-pass@127.0.0.1:6379/0",
            "plan_key": "plan-key-value",
            "notify_url": "https://hooks.slack.com/services/T0/B0/webhook-secret",
        },
        env_file=None,
        environment=False,
    )
    shown = settings.secrets()
    for secret in ("pg-query-pass", "proxy-pass", "push-pass", "redis-pass", "plan-key-value"):
        assert secret in shown
    assert shown["https://hooks.slack.com/services/T0/B0/webhook-secret"] == (
        "https://hooks.slack.com/***"
    )
    assert "pg-query-pass" not in str(settings.ledger)


async def test_a_query_password_of_the_ledger_reaches_no_output(
    cli: Cli, sim: RunningSimulator, pg_url: str, receiver: tuple[Receiver, str], tmp_path: Path
) -> None:
    """`--ledger postgresql://...?password=X` (trust authentication ignores it): X is in none
    of stdout, the JSON logs, the webhook body, the run record, `report`, `runs` or the HTML
    report."""
    hook, url = receiver
    secret = "pg-pass-in-the-query"
    ledger = f"{pg_url}&password={secret}"
    env = sim_env(sim, ledger, MOUVONE_NOTIFY_URL=url)
    src = write_ids(tmp_path / "o.csv", [*ids("CDE", 3), "SUB0000000001"])
    done = await cli.run("run", str(src), "--yes", env=env)
    assert done.code == 1, done.stderr[-2000:]
    assert "password=***" in done.stdout + done.stderr
    outputs = [_seen(done), *(raw.decode() for raw in hook.raw)]
    for args in (("report",), ("report", "--format", "json"), ("runs", "--format", "json")):
        shown = await cli.run(*args, env=env)
        assert shown.code in (0, 1), shown.stderr[-2000:]
        outputs.append(_seen(shown))
    html = tmp_path / "r.html"
    assert (await cli.run("report", "--format", "html", "--output", str(html), env=env)).code == 0
    outputs.append(html.read_text())
    assert [body["exit_code"] for body in hook.bodies] == [1]
    for n, seen in enumerate(outputs):
        assert secret not in seen, n


# 2. The run record and the resume line


def test_the_recorded_command_line_masks_every_secret() -> None:
    """A secret flag in both spellings, a proxy's and a Pushgateway's userinfo, a ledger's
    ?password= and a webhook URL: masked in the command line that is recorded and printed."""
    argv = [
        "run", "o.csv", "--access-token", "tok-value-1", "--api-key=key-value-2",
        "--proxy", "http://u:proxy-value-3@127.0.0.1:3128",
        "--pushgateway=http://u:push-value-4@127.0.0.1:9091",
        "--ledger", "postgresql://u@h/db?password=pg-value-5",
        "--notify-url", "https://hooks.slack.com/services/T0/B0/hook-value-6",
        "--reason", "T-1234 closed terminal",
    ]  # fmt: skip
    line = masked_command_line(argv)
    for n in range(1, 7):
        assert f"value-{n}" not in line
    assert "--notify-url 'https://hooks.slack.com/***'" in line
    assert "'T-1234 closed terminal'" in line


async def test_abbreviated_flags_are_refused(
    cli: Cli, sim: RunningSimulator, tmp_path: Path
) -> None:
    """`--acc TOKEN` (an abbreviation of --access-token) is a usage error, exit 2: a secret
    flag has one spelling, which the masking and the warning know; nothing is sent."""
    src = write_ids(tmp_path / "o.csv", ids("CDE", 1))
    for flag in ("--acc", "--access-tok"):
        done = await cli.run("run", str(src), "--yes", flag, "tok-x", env=sim_env(sim, "l.sqlite"))
        assert done.code == 2, done.stderr[-2000:]
        assert "unrecognized arguments" in done.stderr
    assert sim.sim.stats.token_requests == 0


async def test_the_run_record_holds_no_secret(
    cli: Cli, sim: RunningSimulator, receiver: tuple[Receiver, str], tmp_path: Path
) -> None:
    """Secrets on the command line (the API key, a Pushgateway password, the webhook URL)
    reach neither `runs --format json`, `report --run`, the HTML report nor stdout."""
    hook, url = receiver
    env = sim_env(sim, tmp_path / "l.sqlite")
    key = env.pop("MOUVONE_API_KEY")
    src = write_ids(tmp_path / "o.csv", ids("CDE", 2))
    done = await cli.run(
        "run", str(src), "--yes", "--api-key", key, "--notify-url", url,
        "--pushgateway", "http://ops:push-pw-value@127.0.0.1:9/", env=env,
    )  # fmt: skip
    assert done.code == 0, done.stderr[-2000:]
    runs = await cli.run("runs", "--format", "json", env=env)
    (run,) = json.loads(runs.stdout)
    shown = [_seen(done), runs.stdout]
    shown.append(_seen(await cli.run("report", "--run", run["run_id"], env=env)))
    html = tmp_path / "r.html"
    assert (await cli.run("report", "--format", "html", "--output", str(html), env=env)).code == 0
    shown.append(html.read_text())
    for seen in shown:
        assert key not in seen
        assert "push-pw-value" not in seen
        assert "/hook/T0KEN" not in seen
    assert hook.bodies


# 3. The plan's seal


def _plan(tmp_path: Path, target: str, **people: str | None) -> dict[str, Any]:
    return plans.make(
        ids("CDE", 3),
        target=target,
        token_host="127.0.0.1",
        origin={"input": {"name": "o.csv"}},
        expires_in_s=3600,
        people={"operator": "ann", "reason": "T-1", "ticket": None, **people},
    )


def _write(path: Path, content: dict[str, Any], *, reseal: bool = False) -> Path:
    if reseal:  # an editor that recomputes the digest, as format 1's could be
        content = {**content, "digest": plans.digest(content)}
    path.write_text(json.dumps(content))
    return path


async def test_a_plan_edited_anywhere_is_refused(cli: Cli, make_sim: Any, tmp_path: Path) -> None:
    """A plan whose target, operator, reason, expiry or creation time was edited (its digest
    left as it was) is refused, exit 2, nothing sent; so is a format-1 plan whose old digest
    covered the IDs only."""
    sim, other = await make_sim(), await make_sim()
    env = sim_env(other, tmp_path / "l.sqlite")
    good = _plan(tmp_path, sim.base_url)
    later = (datetime.now(UTC) + timedelta(days=3)).isoformat()
    for edit in (
        {"target": other.base_url},
        {"operator": "someone else"},
        {"reason": "another reason"},
        {"expires_at": later},
        {"created_at": later},
        {"token_host": "evil.example"},
    ):
        path = _write(tmp_path / "plan.json", {**good, **edit})
        done = await cli.run("apply", str(path), "--yes", env=env)
        assert done.code == 2, (edit, done.stderr[-2000:])
        assert "do not match its digest" in done.stderr.strip().splitlines()[-1], edit
    old = {**good, "format": 1, "target": other.base_url}
    old["digest"] = hashlib.sha256("\n".join(sorted(old["orders"])).encode()).hexdigest()
    done = await cli.run("apply", str(_write(tmp_path / "plan.json", old)), "--yes", env=env)
    assert done.code == 2
    assert "format 1" in done.stderr.strip().splitlines()[-1]
    assert sim.sim.stats.arrivals == other.sim.stats.arrivals == []


async def test_expect_digest_and_the_plan_key(
    cli: Cli, sim: RunningSimulator, tmp_path: Path
) -> None:
    """`apply --expect-digest` pins the reviewed plan (a prefix of 12 or more characters);
    with a plan key, `plan` signs and `apply` refuses an unsigned plan, one signed with
    another key, or one an editor re-sealed; the signed, approved plan is sent."""
    env = sim_env(sim, tmp_path / "l.sqlite")
    src = write_ids(tmp_path / "o.csv", ids("CDE", 4))
    unsigned = tmp_path / "unsigned.json"
    assert (await cli.run("plan", str(src), "--output", str(unsigned), env=env)).code == 0
    keyfile = tmp_path / "plan.key"
    keyfile.write_text("the-plan-key-of-the-team\n")
    keyed = {**env, "MOUVONE_PLAN_KEY_FILE": str(keyfile)}
    signed = tmp_path / "signed.json"
    made = await cli.run("plan", str(src), "--output", str(signed), env=keyed)
    assert made.code == 0, made.stderr[-2000:]
    content = json.loads(signed.read_text())
    assert "signed" in made.stdout
    assert f"--expect-digest {content['digest'][:16]}" in made.stdout
    resealed = _write(tmp_path / "resealed.json", {**content, "reason": "x"}, reseal=True)
    wrong = {**keyed, "MOUVONE_PLAN_KEY": "another-key"}
    refusals = (
        (unsigned, keyed, [], "not signed"),
        (signed, wrong, [], "not made with the plan key"),
        (resealed, keyed, [], "not made with the plan key"),
        (signed, keyed, ["--expect-digest", "0" * 12], "not the approved one"),
        (signed, keyed, ["--expect-digest", content["digest"][:8]], "at least 12"),
    )
    for path, environment, extra, fault in refusals:
        done = await cli.run("apply", str(path), "--yes", *extra, env=environment)
        assert done.code == 2, (fault, done.stderr[-2000:])
        assert fault in done.stderr.strip().splitlines()[-1]
    assert sim.sim.stats.arrivals == []
    done = await cli.run(
        "apply", str(signed), "--yes", "--expect-digest", content["digest"][:12], env=keyed
    )
    assert done.code == 0, done.stderr[-2000:]
    assert sorted(sim.sim.stats.deletes) == ids("CDE", 4)
    assert "the-plan-key" not in _seen(done)


async def test_a_plan_records_its_people_and_prints_them_escaped(
    cli: Cli, sim: RunningSimulator, tmp_path: Path
) -> None:
    """A plan made with escape sequences in its operator: `apply --dry-run` shows them
    escaped; `apply` records the plan's operator, reason and ticket on its run."""
    env = sim_env(sim, tmp_path / "l.sqlite")
    src = write_ids(tmp_path / "o.csv", ids("CDE", 2))
    path = tmp_path / "plan.json"
    made = await cli.run(
        "plan", str(src), "--output", str(path), "--operator", f"ann{ESC}[2K{ESC}[1Aforged",
        "--reason", "T-1234 closed terminal", "--ticket", "CHG-1", env=env,
    )  # fmt: skip
    assert made.code == 0, made.stderr[-2000:]
    assert ESC not in made.stdout
    dry = await cli.run("apply", str(path), "--dry-run", env=env)
    assert ESC not in _seen(dry)
    done = await cli.run("apply", str(path), "--yes", env=env)
    assert done.code == 0, done.stderr[-2000:]
    assert ESC not in _seen(done)
    runs = json.loads((await cli.run("runs", "--format", "json", env=env)).stdout)
    (run,) = [r for r in runs if r["command"] == "apply"]
    assert (run["reason"], run["ticket"]) == ("T-1234 closed terminal", "CHG-1")
    assert run["operator"].startswith("ann")


async def test_a_plan_time_without_a_time_zone_is_a_usage_error(
    cli: Cli, sim: RunningSimulator, tmp_path: Path
) -> None:
    """`expires_at` without a time zone (digest recomputed): exit 2 naming it, no traceback."""
    naive = (datetime.now(UTC) + timedelta(hours=1)).replace(tzinfo=None).isoformat()
    content = {**_plan(tmp_path, sim.base_url), "expires_at": naive}
    path = _write(tmp_path / "plan.json", content, reseal=True)
    done = await cli.run("apply", str(path), "--yes", env=sim_env(sim, tmp_path / "l.sqlite"))
    assert done.code == 2, done.stderr[-2000:]
    assert "no time zone" in done.stderr.strip().splitlines()[-1]
    assert "Traceback" not in done.stderr


# 4. A token answer in pieces


async def _token_in_pieces(sim: RunningSimulator, request: web.Request) -> web.StreamResponse:
    """The simulator's own token answer, passed on in three chunks with pauses between them."""
    form = await request.post()
    async with (
        aiohttp.ClientSession() as session,
        session.post(sim.token_url, data=dict(form)) as real,
    ):
        body = await real.read()
    response = web.StreamResponse(headers={"Content-Type": "application/json"})
    response.enable_chunked_encoding()
    await response.prepare(request)
    third = len(body) // 3
    for piece in (body[:third], body[third : 2 * third], body[2 * third :]):
        await response.write(piece)
        await asyncio.sleep(0.05)  # the network's pace, not a synchronisation
    await response.write_eof()
    return response


@pytest.mark.parametrize("scheme", ["http", "https"])
async def test_a_token_answer_in_pieces_is_read_whole(
    cli: Cli, sim: RunningSimulator, tmp_path: Path, scheme: str
) -> None:
    """A token endpoint that answers in chunks, with delays, over HTTP and over HTTPS: the
    token is read whole on the first attempt and every order is cancelled."""
    app = web.Application()
    app.router.add_post("/token", functools.partial(_token_in_pieces, sim))
    runner = web.AppRunner(app)
    await runner.setup()
    tls = None
    env_extra: dict[str, str] = {}
    if scheme == "https":
        ca = trustme.CA()
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ca.issue_cert("127.0.0.1").configure_cert(tls)
        bundle = tmp_path / "ca.pem"
        ca.cert_pem.write_to_path(str(bundle))
        env_extra["MOUVONE_CA_BUNDLE"] = str(bundle)
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=tls)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        env = sim_env(sim, tmp_path / "l.sqlite", MOUVONE_TOKEN_URL=f"{scheme}://127.0.0.1:{port}/token",
                      **env_extra)  # fmt: skip
        src = write_ids(tmp_path / "o.csv", ids("CDE", 3))
        done = await cli.run("run", str(src), "--yes", env=env)
    finally:
        await runner.cleanup()
    assert done.code == 0, done.stderr[-2000:]
    assert "token_retry" not in done.stderr
    assert sorted(sim.sim.stats.deletes) == ids("CDE", 3)


# 5. Every ID checked before it becomes a URL


def test_the_url_builder_refuses_an_empty_id() -> None:
    """An empty ID would be the collection's URL: refused by the builder itself."""
    with pytest.raises(ValueError, match="empty"):
        OrderUrls("https://api.example.test/v1")("")


async def test_plan_and_ledger_ids_are_checked_before_they_are_sent(
    cli: Cli, sim: RunningSimulator, tmp_path: Path
) -> None:
    """A plan holding an empty ID and `not-an-id at all` (sealed by whoever made it) and a
    ledger holding a pending ID that fails the pattern: each recorded `invalid` WRONG_FORMAT,
    never sent; the valid ones are."""
    ledger = tmp_path / "l.sqlite"
    env = sim_env(sim, ledger)
    content = plans.make(
        ["", "not-an-id at all", "CDE0000000001"],
        target=sim.base_url,
        token_host="127.0.0.1",
        origin={"input": {"name": "o.csv"}},
        expires_in_s=3600,
        people={"operator": "ann"},
    )
    path = _write(tmp_path / "plan.json", content)
    done = await cli.run("apply", str(path), "--yes", env=env)
    assert done.code == 1, done.stderr[-2000:]
    rows = ledger_rows(ledger)
    assert rows["not-an-id at all"]["outcome"] == "invalid"
    assert rows[""]["error_code"] == "WRONG_FORMAT"
    assert list(sim.sim.stats.deletes) == ["CDE0000000001"]
    with sqlite3.connect(ledger) as db:
        db.execute("UPDATE orders SET outcome = 'pending' WHERE order_id = 'not-an-id at all'")
    retried = await cli.run("retry", "--yes", env=env)
    assert retried.code == 1, retried.stderr[-2000:]
    assert ledger_rows(ledger)["not-an-id at all"]["outcome"] == "invalid"
    assert list(sim.sim.stats.deletes) == ["CDE0000000001"]
    assert all(not a.endswith("/customer-orders/") for a in map(str, sim.sim.stats.arrivals))


# 6. A config file others may write


async def test_a_config_file_others_may_write_is_refused(
    cli: Cli, sim: RunningSimulator, tmp_path: Path
) -> None:
    """A --config file that others may write (it can set --on-finish): exit 2 naming it,
    its command never run, nothing sent."""
    marker = tmp_path / "ran"
    config = tmp_path / "shared.toml"
    config.write_text(f'on_finish = "touch {marker}"\n')
    config.chmod(0o666)
    src = write_ids(tmp_path / "o.csv", ids("CDE", 1))
    done = await cli.run(
        "run", str(src), "--yes", "--config", str(config), env=sim_env(sim, "l.sqlite")
    )
    assert done.code == 2
    last = done.stderr.strip().splitlines()[-1]
    assert str(config) in last
    assert "others may write it" in last
    assert not marker.exists()
    assert sim.sim.stats.token_requests == 0


# 7. Redaction of codes, and before a message is cut


def test_codes_and_long_messages_are_redacted_before_they_are_cut() -> None:
    """An API code holding the key, and a message holding it across the 500th character: the
    key is in neither as recorded, not even half of it."""
    key = "k" * 16 + "0123456789abcdef"  # 32 characters
    redact.add(key)
    body = json.dumps({"code": f"BAD_{key}", "message": "x" * 484 + key + " tail"}).encode()
    answer = _parse(400, body, None, 1.0)
    assert key not in (answer.code or "")
    assert "k" * 16 not in (answer.message or "")
    assert "0123456789abcdef" not in (answer.message or "")


async def test_an_api_echoing_the_key_in_its_code(cli: Cli, serve: Serve, tmp_path: Path) -> None:
    """A hostile API that answers 400 with the API key as its code: the ledger, the report,
    the audit export and stdout never hold the key."""
    key = "api-key-of-thirty-two-characters"

    async def delete(request: web.Request) -> web.Response:
        echoed = request.headers.get("Ocp-Apim-Subscription-Key", "")
        return web.json_response({"code": f"X_{echoed}", "message": "m" * 490 + echoed}, status=400)

    root = await serve({"/token": fixed_token, "/v1/customer-orders/{id}": delete})
    ledger = tmp_path / "l.sqlite"
    env = lookalike_env(root, MOUVONE_API_KEY=key, MOUVONE_LEDGER=str(ledger))
    done = await cli.run("run", str(write_ids(tmp_path / "o.csv", ids("CDE", 2))), "--yes", env=env)
    assert done.code == 1, done.stderr[-2000:]
    shown = [_seen(done), json.dumps(ledger_rows(ledger))]
    shown += [
        _seen(await cli.run(*args, env=env))
        for args in (("report", "--format", "csv"), ("report", "--format", "json"), ("audit",))
    ]
    for seen in shown:
        assert key not in seen
        assert key[:16] not in seen


# 8. Chat markup


def test_notifications_escape_chat_markup() -> None:
    """API codes and messages, the reason and the stop reason reach a Slack text with `<`, `>`
    and `&` as entities (no `<!channel>`, no `<url|link>`) and a Teams text with its Markdown
    marks escaped too."""
    report = {
        "run_id": "R1",
        "exit_code": 3,
        "outcomes": {"rejected": 2},
        "error_codes": {"<!channel>": 1, "<https://evil.example|Click to re-login>": 1},
        "reason": "the API said <!here> [Click](https://evil.example)",
    }
    data = payload(report, "run", {"operator": "ann", "reason": "a & b"}, None)
    slack = str(data["text"])
    assert "<!channel>" not in slack
    assert "<https://evil.example|" not in slack
    assert "&lt;!channel&gt;" in slack
    assert "a &amp; b" in slack
    teams = text(data, markdown=True)
    assert "[Click](https" not in teams
    assert "\\[Click\\]\\(https" in teams


def test_a_secret_that_is_a_json_word_breaks_no_notification() -> None:
    """An API key of `null` is redacted from the values, not from JSON text: the payload is
    still a complete object."""
    redact.add("null")
    data = payload({"run_id": "R2", "exit_code": 0, "outcomes": {}}, "run", {}, None)
    assert json.loads(json.dumps(data))["exit_code"] == 0
    assert data["ticket"] is None


# 9. Escape sequences on the terminal


async def test_control_status_of_a_hostile_group(queue: Queue, cli: Cli, tmp_path: Path) -> None:
    """A consumer status that is not JSON, and one with escape sequences: `control status`
    shows both escaped, exit 0, no traceback."""
    _control, status_key = keys(queue.names.group)
    await queue.redis.hset(status_key, mapping={
        "broken": "not json at all",
        f"evil{ESC}]0;pwned{ESC}\\": json.dumps({"done": 1, "outcomes": {f"x{ESC}[2J": 1}}),
    })  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("MOUVONE_")}
    env.update(MOUVONE_REDIS_URL=queue.url, MOUVONE_GROUP=queue.names.group,
               MOUVONE_STREAM=queue.names.stream)  # fmt: skip
    done = await cli.run("control", "status", env=env)
    assert done.code == 0, done.stderr[-2000:]
    assert "not readable" in done.stdout
    assert ESC not in done.stdout + done.stderr


async def test_a_hostile_selection_reaches_the_terminal_escaped(
    cli: Cli, serve: Serve, tmp_path: Path
) -> None:
    """IDs and order types from a hostile search: `select` writes no escape sequence and no
    formula, and its summary line neither."""
    items = [
        {"customerOrderId": f"{ESC}]0;pwned{ESC}\\", "type": "Master", "status": "Draft"},
        {"customerOrderId": '=HYPERLINK("http://evil")', "type": "Master", "status": "Draft"},
        {"customerOrderId": "ABC0000000001", "type": f"Sub{ESC}[2J", "status": "Draft"},
    ]

    async def search(_request: web.Request) -> web.Response:
        return web.json_response({"total": 3, "returned": 3, "first": 0, "items": items})

    root = await serve({"/token": fixed_token, "/v1/customer-orders": search})
    env = lookalike_env(root)
    done = await cli.run("select", "--status", "Draft", env=env, timeout=30)
    assert done.code == 0, done.stderr[-2000:]
    assert ESC not in done.stdout + done.stderr
    cells = [row[0] for row in csv.reader(io.StringIO(done.stdout))]
    assert not any(cell.startswith("=") for cell in cells)


async def test_errors_and_summaries_are_escaped(
    cli: Cli, sim: RunningSimulator, tmp_path: Path
) -> None:
    """An input named with escape sequences: the error's last line shows them escaped."""
    name = tmp_path / f"o{ESC}]0;pwned{ESC}\\.csv"
    done = await cli.run("run", str(name), "--yes", env=sim_env(sim, tmp_path / "l.sqlite"))
    assert done.code == 2
    assert ESC not in done.stderr
    assert "\\x1b" in done.stderr.strip().splitlines()[-1]


# 10. CSV formulas


async def test_every_csv_cell_is_neutralised(
    cli: Cli, sim: RunningSimulator, tmp_path: Path
) -> None:
    """An invalid ID that a spreadsheet would run as a formula: `report --format csv` writes
    it behind a quote, like the other text cells."""
    env = sim_env(sim, tmp_path / "l.sqlite")
    formula = "=cmd|' /C calc'!A0"
    src = write_ids(tmp_path / "o.csv", [formula, *ids("CDE", 1)])
    assert (await cli.run("run", str(src), "--yes", env=env)).code == 1
    report = await cli.run("report", "--format", "csv", env=env)
    first = [row[0] for row in csv.reader(io.StringIO(report.stdout))][1:]
    assert "'" + formula in first
    assert formula not in first


# 11. --on-finish's environment


async def test_on_finish_gets_only_a_shells_variables(
    cli: Cli, sim: RunningSimulator, tmp_path: Path
) -> None:
    """--on-finish's child sees no MOUVONE_ variable (the ledger URL, the proxy...) and no
    proxy of the environment; PATH and HOME are there."""
    seen = tmp_path / "env.txt"
    proxy = "http://u:proxy-pw@127.0.0.1:9"
    env = sim_env(sim, tmp_path / "l.sqlite", MOUVONE_ON_FINISH=f"env > {seen}",
                  HTTPS_PROXY=proxy, NO_PROXY="127.0.0.1,localhost")  # fmt: skip
    done = await cli.run("run", str(write_ids(tmp_path / "o.csv", ids("CDE", 1))), "--yes", env=env)
    assert done.code == 0, done.stderr[-2000:]
    names = {line.split("=", 1)[0] for line in seen.read_text().splitlines() if "=" in line}
    assert not {n for n in names if n.startswith("MOUVONE_") or "PROXY" in n.upper()}
    assert "PATH" in names


async def test_an_api_key_of_null_keeps_the_notification(
    cli: Cli, make_sim: Any, receiver: tuple[Receiver, str], tmp_path: Path
) -> None:
    """An API key that is a JSON word (`null`): the run still ends 0 and notifies."""
    hook, url = receiver
    running = await make_sim(api_key="null")
    env = sim_env(running, tmp_path / "l.sqlite", MOUVONE_NOTIFY_URL=url)
    done = await cli.run("run", str(write_ids(tmp_path / "o.csv", ids("CDE", 1))), "--yes", env=env)
    assert done.code == 0, done.stderr[-2000:]
    assert [b["exit_code"] for b in hook.bodies] == [0]


# 12. --log-file


async def test_the_log_file_is_not_a_link_and_is_private(
    cli: Cli, sim: RunningSimulator, tmp_path: Path
) -> None:
    """A link at the --log-file path is refused (exit 2, its target untouched); an existing
    log that others could read is owner-only after the run."""
    env = sim_env(sim, tmp_path / "l.sqlite")
    src = write_ids(tmp_path / "o.csv", ids("CDE", 1))
    target = tmp_path / "victim.txt"
    target.write_text("keep\n")
    link = tmp_path / "run.log"
    link.symlink_to(target)
    done = await cli.run("run", str(src), "--yes", "--log-file", str(link), env=env)
    assert done.code == 2
    assert "symbolic link" in done.stderr.strip().splitlines()[-1]
    assert target.read_text() == "keep\n"
    assert sim.sim.stats.arrivals == []
    log = tmp_path / "open.log"
    log.write_text("")
    log.chmod(0o644)
    done = await cli.run("run", str(src), "--yes", "--log-file", str(log), env=env)
    assert done.code == 0, done.stderr[-2000:]
    assert log.stat().st_mode & 0o777 == 0o600
    assert '"run_summary"' in log.read_text()


# 13. retry's reused limits, a ledger others may write


async def test_retry_checks_the_limits_it_reuses(
    cli: Cli, sim: RunningSimulator, tmp_path: Path
) -> None:
    """A ledger whose last run records concurrency 100000: `retry` refuses (exit 2, naming the
    setting and the run), nothing sent; a ledger others may write is warned of."""
    ledger = tmp_path / "l.sqlite"
    env = sim_env(sim, ledger, MOUVONE_MAX_ATTEMPTS="1")
    src = write_ids(tmp_path / "o.csv", ["ERR0000000001"])
    assert (await cli.run("run", str(src), "--yes", env=env)).code == 1
    with sqlite3.connect(ledger) as db:
        (summary,) = db.execute("SELECT summary FROM runs").fetchone()
        changed = json.loads(summary)
        changed["limits"]["concurrency"] = 100000
        db.execute("UPDATE runs SET summary = ?", (json.dumps(changed),))
    before = len(sim.sim.stats.arrivals)
    ledger.chmod(0o666)
    done = await cli.run("retry", "--yes", env=env)
    assert done.code == 2, done.stderr[-2000:]
    last = done.stderr.strip().splitlines()[-1]
    assert "concurrency" in last
    assert "recorded by run" in last
    assert len(sim.sim.stats.arrivals) == before
    done = await cli.run("retry", "--yes", "--concurrency", "4", env=env)
    assert done.code == 1, done.stderr[-2000:]
    assert "ledger_open_to_others" in done.stderr


# 14. A selection's total


async def test_a_selection_total_beyond_its_pages_asks_no_far_offset(
    cli: Cli, serve: Serve, tmp_path: Path
) -> None:
    """A search that returns full pages and announces 10^15 orders: refused (exit 3) after
    its first page; no offset is asked that no page led to."""
    offsets: list[int] = []

    async def search(request: web.Request) -> web.Response:
        offset = int(request.query.get("offset", "0"))
        offsets.append(offset)
        items = [
            {"customerOrderId": f"ABC{offset + n:010d}", "type": "Master", "status": "Draft"}
            for n in range(50)
        ]
        return web.json_response({"total": 10**15, "returned": 50, "first": offset, "items": items})

    root = await serve({"/token": fixed_token, "/v1/customer-orders": search})
    env = lookalike_env(root)
    done = await cli.run("select", "--status", "Draft", env=env, timeout=30)
    assert done.code == 3, done.stderr[-2000:]
    assert "cannot be trusted" in done.stderr.strip().splitlines()[-1]
    assert offsets == [0]
