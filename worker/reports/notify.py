"""When a run ends, whatever its exit status: one JSON POST to each --notify-url (what Slack and
Teams incoming webhooks display is its ``text``) and --on-finish CMD with that JSON on its
standard input. Neither ever changes the exit status; neither carries a secret.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
import structlog

from worker.api.client import new_session, proxy_for
from worker.domain.location import Location
from worker.domain.models import SUCCESS, Outcome
from worker.ledger import ledger_at
from worker.runtime.redaction import redact
from worker.settings import Settings

log = structlog.get_logger(__name__)

NEEDING_A_PERSON = 20  # orders listed in the notification
NOTIFY_BUDGET_S = 10.0  # each URL: retried with backoff for at most this long
ON_FINISH_TIMEOUT_S = 30.0
# What --on-finish's command gets of the environment: the run itself is in the JSON.
ON_FINISH_ENV = frozenset(
    {"PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG", "LANGUAGE", "TZ", "TMPDIR", "TERM"}
)
MEANING = {
    0: "every order cancelled or already cancelled",
    1: "finished; some orders need a person",
    2: "refused before sending: a usage or configuration error",
    3: "aborted: a fatal API answer or too many failures; unanswered orders stay pending",
    4: "stopped early by a limit the operator set; resume with the same command",
    129: "hung up (SIGHUP: its terminal closed); resume with the same command",
    130: "interrupted (SIGINT); resume with the same command",
    143: "terminated (SIGTERM); resume with the same command",
}


def payload(
    report: Mapping[str, object],
    command: str,
    who: Mapping[str, object],
    ledger_path: Location | None,
) -> dict[str, object]:
    """The JSON a notification carries (and --on-finish reads), from the run's summary."""
    outcomes = {k: v for k, v in dict(_mapping(report.get("outcomes"))).items() if v}
    codes = dict(_mapping(report.get("error_codes")))
    data: dict[str, object] = {
        "run_id": report.get("run_id"),
        "command": command,
        "operator": who.get("operator"),
        "reason": who.get("reason"),
        "ticket": who.get("ticket"),
        "target": report.get("target") or None,
        "exit_code": report.get("exit_code"),
        "outcomes": outcomes,
        "error_codes": codes,
        "duration_s": report.get("elapsed_s"),
        "ledger": str(ledger_path) if ledger_path is not None else None,
        "needing_a_person": needing_a_person(ledger_path, report.get("run_id")),
    }
    for key in ("failed_elsewhere", "taken_elsewhere"):  # another run's (a shared ledger)
        if report.get(key):
            data[key] = report[key]
    if report.get("reason"):
        data["stop_reason"] = report["reason"]
    cleaned: dict[str, object] = redact.clean(data)  # the values, before they become text
    cleaned["text"] = text(cleaned)
    return cleaned


def text(data: Mapping[str, object], *, markdown: bool = False) -> str:
    """The one-paragraph summary a person reads in a chat channel, every value escaped for
    it: Slack's ``<``, ``>`` and ``&`` (no ``<!channel>``, no ``<url|link>``), and with
    ``markdown`` (Teams) the Markdown marks too."""

    def e(value: object) -> str:
        return chat_escape(str(value), markdown=markdown)

    code = data.get("exit_code")
    who = f" by {e(data['operator'])}" if data.get("operator") else ""
    why = [f"reason: {e(data['reason'])}"] if data.get("reason") else []
    why += [f"ticket {e(data['ticket'])}"] if data.get("ticket") else []
    outcomes = _mapping(data.get("outcomes"))
    counts = ", ".join(f"{e(n)} {e(o)}" for o, n in outcomes.items()) or "no order answered"
    if data.get("failed_elsewhere"):
        counts += f", {e(data['failed_elsewhere'])} failed in another run (left to the next run)"
    if data.get("taken_elsewhere"):
        counts += f", {e(data['taken_elsewhere'])} taken by another run"
    codes = _mapping(data.get("error_codes"))
    listed = ", ".join(f"{e(c)} {e(n)}" for c, n in codes.items())
    coded = f" (error codes: {listed})" if codes else ""
    meaning = MEANING.get(code if isinstance(code, int) else -1, "")
    stop = f" Stopped: {e(data['stop_reason'])}." if data.get("stop_reason") else ""
    took = data.get("duration_s")
    return (
        f"cancel-orders {e(data.get('command'))} {e(data.get('run_id') or '')}{who}"
        f"{' (' + ', '.join(why) + ')' if why else ''} against {e(data.get('target') or '?')} "
        f"ended with exit {e(code)}: {meaning}. {counts}{coded}"
        f"{f' in {e(took)} s' if took is not None else ''}.{stop}"
        f"{' Ledger: ' + e(data['ledger']) + '.' if data.get('ledger') else ''}"
    )


_MARKDOWN = re.compile(r"[\\`*_{}\[\]()#+\-.!|~]")
TEAMS_HOSTS = (".office.com", ".office365.com", ".logic.azure.com", ".powerautomate.com")


def chat_escape(value: str, *, markdown: bool = False) -> str:
    """``value`` as plain text in a chat message: Slack's three control characters as
    entities; with ``markdown``, every Markdown mark behind a backslash."""
    value = value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return _MARKDOWN.sub(lambda m: "\\" + m.group(), value) if markdown else value


def _renders_markdown(url: str) -> bool:
    host = (urlsplit(url).hostname or "").lower()
    return host.endswith(TEAMS_HOSTS)


def needing_a_person(ledger_path: Location | None, run_id: object) -> list[dict[str, object]]:
    """Up to NEEDING_A_PERSON orders of this run that ended in neither success nor pending."""
    if (
        ledger_path is None
        or not isinstance(run_id, str)
        or (isinstance(ledger_path, Path) and not ledger_path.is_file())
    ):
        return []
    keep = {o.value for o in Outcome} - {o.value for o in SUCCESS} - {Outcome.PENDING.value}
    try:
        ledger = ledger_at(ledger_path, readonly=True)
    except Exception:  # noqa: BLE001 - a notification goes out even when the ledger fails
        return []
    found: list[dict[str, object]] = []
    try:
        for row in ledger.audit().run_orders(run_id):
            if row[1] in keep:
                found.append(
                    {"order_id": row[0], "outcome": row[1], "error_code": row[3], "message": row[4]}
                )
                if len(found) == NEEDING_A_PERSON:
                    break
    except Exception:  # noqa: BLE001 - what was found so far
        log.debug("notify_orders_unreadable")
    finally:
        ledger.close()
    return found


async def announce(data: Mapping[str, object], settings: Settings) -> None:
    """Send the notifications and run the --on-finish command; failures are logged only."""
    if settings.notify_urls:
        try:
            await _post_all(settings, data)
        except Exception as exc:  # noqa: BLE001 - never changes the exit status
            log.error("notify_failed", error=redact.text(str(exc)))  # noqa: TRY400
    if settings.on_finish:
        await asyncio.to_thread(run_on_finish, settings.on_finish, json.dumps(data))


async def _post_all(settings: Settings, data: Mapping[str, object]) -> None:
    """One POST to each URL; a Teams URL gets the text with its Markdown escaped."""
    plain = json.dumps(data)
    teams = json.dumps({**data, "text": text(data, markdown=True)})
    session = new_session(len(settings.notify_urls), settings.ca_bundle)
    async with session:
        await asyncio.gather(
            *(
                _post(
                    session,
                    url,
                    teams if _renders_markdown(url) else plain,
                    proxy_for(url, settings.proxy),
                )
                for url in settings.notify_urls
            )
        )


async def _post(session: aiohttp.ClientSession, url: str, body: str, proxy: str | None) -> None:
    """POST ``body``, retried with backoff for at most NOTIFY_BUDGET_S on a network failure,
    a 429 or a 5xx; the URL is logged by its host only (a webhook's path is its secret)."""
    host = urlsplit(url).hostname
    deadline = time.monotonic() + NOTIFY_BUDGET_S
    delay = 0.5
    headers = {"Content-Type": "application/json"}
    while True:
        left = deadline - time.monotonic()
        try:
            async with session.post(
                url,
                data=body,
                headers=headers,
                allow_redirects=False,
                proxy=proxy,
                timeout=aiohttp.ClientTimeout(total=max(left, 0.1)),
            ) as resp:
                status = resp.status
            if status < 300:
                log.info("notified", host=host, status=status)
                return
            error = f"HTTP {status}"
            final = status < 500 and status != 429
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            error, final = type(exc).__name__, False
        if final or time.monotonic() + delay > deadline:
            log.error("notify_failed", host=host, error=error)
            return
        await asyncio.sleep(delay)
        delay *= 2


def run_on_finish(command: str, body: str) -> None:
    """``sh -c CMD`` with the JSON on its standard input and only the environment a shell
    command needs (ON_FINISH_ENV: no setting of the tool, no proxy, no credential), killed
    (its whole process group) after ON_FINISH_TIMEOUT_S."""
    env = {k: v for k, v in os.environ.items() if k in ON_FINISH_ENV or k.startswith("LC_")}
    try:
        child = subprocess.Popen(  # noqa: S602 - the operator's own command, as a shell runs it
            command,
            shell=True,
            stdin=subprocess.PIPE,
            env=env,
            start_new_session=True,
        )
    except OSError as exc:
        log.error("on_finish_failed", error=str(exc))  # noqa: TRY400
        return
    try:
        child.communicate(body.encode(), timeout=ON_FINISH_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(child.pid, signal.SIGKILL)
        child.wait()
        killed = f"still running after {ON_FINISH_TIMEOUT_S:g}s: killed"
        log.error("on_finish_failed", error=killed)  # noqa: TRY400 - no traceback to show
        return
    if child.returncode != 0:
        log.error("on_finish_failed", exit_code=child.returncode)


def _mapping(value: object) -> Mapping[str, object]:
    return value if isinstance(value, Mapping) else {}
