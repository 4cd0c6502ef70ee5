"""Settings: precedence flag > environment > .env > --config > defaults; one-line errors."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from worker.domain.errors import ConfigError
from worker.settings import load_settings


@pytest.fixture(autouse=True)
def _no_mouvone_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith("MOUVONE_"):
            monkeypatch.delenv(key)


def test_defaults_match_the_contract(tmp_path: Path) -> None:
    """The shipped defaults are the contract's."""
    s = load_settings({}, env_file=tmp_path / "none.env")
    assert s.base_url is None  # no silent target: the integration gateway is an example
    assert s.token_url is None
    with pytest.raises(ConfigError, match="no target: set MOUVONE_BASE_URL"):
        s.require_target()
    assert (s.rate, s.concurrency, s.max_attempts, s.timeout, s.max_wait) == (10, 16, 5, 30, 300)
    assert s.ledger == Path("cancellations.sqlite")
    assert s.id_pattern == "^[A-Z]{3}[0-9]{10}$"
    assert s.log_level == "info"
    assert s.log_format is None


def test_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each source overrides the ones below it, key by key."""
    config = tmp_path / "c.toml"
    config.write_text("rate = 1\nconcurrency = 2\nmax_attempts = 3\ntimeout = 4\n")
    dotenv = tmp_path / ".env"
    dotenv.write_text("MOUVONE_CONCURRENCY=20\nMOUVONE_MAX_ATTEMPTS=30\nMOUVONE_TIMEOUT=40\n")
    monkeypatch.setenv("MOUVONE_MAX_ATTEMPTS", "31")
    monkeypatch.setenv("MOUVONE_TIMEOUT", "400")
    s = load_settings({"timeout": 4000.0, "rate": None}, config, env_file=dotenv)
    assert s.rate == 1  # config file over default
    assert s.concurrency == 20  # .env over config file
    assert s.max_attempts == 31  # environment over .env
    assert s.timeout == 4000  # flag over environment
    assert s.max_wait == 300  # default


def test_secrets_are_hidden(tmp_path: Path) -> None:
    """Secrets are SecretStr: their repr does not show them."""
    s = load_settings(
        {"client_secret": "s3cr3t-value", "api_key": "k3y-value"}, env_file=tmp_path / "none"
    )
    assert "s3cr3t-value" not in repr(s)
    assert "k3y-value" not in str(s)
    assert set(s.secrets()) == {"s3cr3t-value", "k3y-value"}


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ({}, "missing credential: MOUVONE_API_KEY (--api-key), MOUVONE_CLIENT_ID"),
        ({"api_key": "k"}, "MOUVONE_CLIENT_ID (--client-id), MOUVONE_CLIENT_SECRET"),
        ({"api_key": "k", "client_id": "c"}, "MOUVONE_CLIENT_SECRET (--client-secret)"),
        ({"access_token": "t"}, "missing credential: MOUVONE_API_KEY (--api-key)"),
    ],
)
def test_missing_credentials_are_named(tmp_path: Path, flags: dict[str, str], message: str) -> None:
    """The one-line error names every missing credential."""
    s = load_settings(flags, env_file=tmp_path / "none")
    with pytest.raises(ConfigError) as err:
        s.require_credentials()
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_complete_credentials(tmp_path: Path) -> None:
    """Client credentials or a static token, each with the API key, are enough."""
    load_settings(
        {"api_key": "k", "client_id": "c", "client_secret": "s"}, env_file=tmp_path / "n"
    ).require_credentials()
    load_settings(
        {"api_key": "k", "access_token": "t"}, env_file=tmp_path / "n"
    ).require_credentials()


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ({"rate": 0}, "invalid setting rate: Input should be greater than 0"),
        ({"concurrency": 0}, "invalid setting concurrency"),
        ({"base_url": "ftp://x"}, "invalid setting base_url: must be an http:// or https:// URL"),
        ({"id_pattern": "(["}, "invalid setting id_pattern: not a regular expression"),
        ({"log_level": "loud"}, "invalid setting log_level"),
        ({"log_format": "xml"}, "invalid setting log_format"),
    ],
)
def test_bad_values(tmp_path: Path, flags: dict[str, object], message: str) -> None:
    """A bad value is one line naming the setting."""
    with pytest.raises(ConfigError) as err:
        load_settings(flags, env_file=tmp_path / "none")
    assert message in str(err.value)


def test_bad_config_file(tmp_path: Path) -> None:
    """A missing file, bad TOML or an unknown key names the file."""
    with pytest.raises(ConfigError, match="config file not found"):
        load_settings({}, tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("rate = [\n")
    with pytest.raises(ConfigError, match=r"bad\.toml"):
        load_settings({}, bad, env_file=tmp_path / "none")
    typo = tmp_path / "typo.toml"
    typo.write_text("rat = 5\n")
    expected = r"invalid setting rat: unknown setting \(in .*typo\.toml or \.env\)"
    with pytest.raises(ConfigError, match=expected):
        load_settings({}, typo, env_file=tmp_path / "none")


def test_a_bad_value_names_where_it_came_from(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bad value from a file or the environment names its source: the --config file and its
    line, the .env file and its line, the environment's variable; one given as a flag is the
    person's own, named by the setting alone. The source that counts is the one named (a flag
    over the environment over .env over the file)."""
    config = tmp_path / "job.toml"
    config.write_text('# the night job\nconcurrency = 8\nrate = "fast"\n')
    with pytest.raises(ConfigError) as err:
        load_settings({}, config, env_file=tmp_path / "none")
    assert str(err.value).startswith("invalid setting rate: Input should be a valid number")
    assert str(err.value).endswith(f"(from {config} line 3)")

    dotenv = tmp_path / ".env"
    dotenv.write_text("MOUVONE_RATE=7\nOTHER=1\nexport MOUVONE_RATE=slow\n")  # the last counts
    dotenv.chmod(0o600)
    with pytest.raises(ConfigError) as err:
        load_settings({}, config, env_file=dotenv)
    assert str(err.value).endswith(f"(from {dotenv} line 3)")

    monkeypatch.setenv("MOUVONE_RATE", "abc")
    with pytest.raises(ConfigError) as err:
        load_settings({}, config, env_file=dotenv)
    assert str(err.value).endswith("(from MOUVONE_RATE in the environment)")

    with pytest.raises(ConfigError) as err:
        load_settings({"rate": -1}, config, env_file=dotenv)
    assert str(err.value) == "invalid setting rate: Input should be greater than 0"


def test_environment_can_be_ignored(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The demo builds settings that a real credential in the environment cannot reach."""
    monkeypatch.setenv("MOUVONE_ACCESS_TOKEN", "real-token")
    s = load_settings({}, env_file=None, environment=False)
    assert s.access_token is None


def test_dotenv_lines_of_other_programs_are_ignored(tmp_path: Path) -> None:
    """A shared .env may hold other programs' variables; a MOUVONE_ typo is still an error."""
    dotenv = tmp_path / ".env"
    dotenv.write_text("DATABASE_URL=postgres://x\nexport MOUVONE_RATE=3\n")
    assert load_settings({}, env_file=dotenv).rate == 3
    dotenv.write_text("MOUVONE_RATEE=3\n")
    with pytest.raises(ConfigError, match=r"invalid setting rate+e: unknown setting \(in \.env\)"):
        load_settings({}, env_file=dotenv)


@pytest.mark.parametrize(
    ("url", "allowed"),
    [
        ("https://api.example.com/v1", True),
        ("http://127.0.0.1:8080/v1", True),
        ("http://127.8.9.10/v1", True),
        ("http://localhost:8080/v1", True),
        ("http://[::1]:8080/v1", True),
        ("http://api.example.com/v1", False),
        ("http://10.0.0.5/v1", False),
        ("http://127.0.0.1.example.com/v1", False),
    ],
)
def test_plain_http_only_to_loopback(tmp_path: Path, url: str, allowed: bool) -> None:
    """Credentials never travel in clear: http:// is refused unless the host is loopback or
    --allow-insecure-http is given; https is always accepted."""
    for key in ("base_url", "token_url"):
        if allowed:
            assert load_settings({key: url}, env_file=tmp_path / "none.env")
        else:
            with pytest.raises(ConfigError, match=f"{key} http://.* --allow-insecure-http"):
                load_settings({key: url}, env_file=tmp_path / "none.env")
        flags = {key: url, "allow_insecure_http": True}
        assert load_settings(flags, env_file=tmp_path / "none.env").allow_insecure_http


def test_allow_insecure_http_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The switch is a setting like any other (MOUVONE_ALLOW_INSECURE_HTTP)."""
    monkeypatch.setenv("MOUVONE_BASE_URL", "http://api.example.com/v1")
    monkeypatch.setenv("MOUVONE_ALLOW_INSECURE_HTTP", "true")
    assert load_settings({}, env_file=tmp_path / "none.env").base_url.startswith("http://")


def test_a_named_target(tmp_path: Path) -> None:
    """--target NAME takes the base and token URLs of [targets.NAME] in the config file; an
    unknown name is refused naming the ones there."""
    config = tmp_path / "c.toml"
    config.write_text(
        '[targets.staging]\nbase_url = "https://staging.example/v1"\n'
        'token_url = "https://login.example/token"\n'
    )
    s = load_settings({"target": "staging"}, config, env_file=tmp_path / "none.env")
    assert (s.base_url, s.token_url) == (
        "https://staging.example/v1",
        "https://login.example/token",
    )
    assert s.target_label == "staging (https://staging.example/v1)"
    assert s.token_host == "login.example"
    with pytest.raises(ConfigError, match=r"no \[targets.prod\].*staging"):
        load_settings({"target": "prod"}, config, env_file=tmp_path / "none.env")


def test_deadlines() -> None:
    """--run-time takes 90s, 45m, 2h; --until takes HH:MM (the next such local time) or an
    ISO-8601 time; anything else is refused naming the forms."""
    from datetime import datetime, timedelta  # noqa: PLC0415

    from worker.settings import deadline_after, duration_s  # noqa: PLC0415

    assert (duration_s("90s"), duration_s("45m"), duration_s("2h")) == (90, 2700, 7200)
    with pytest.raises(ValueError, match="90s, 45m, 2h"):
        duration_s("soon")
    now = datetime(2026, 11, 29, 23, 0).astimezone()
    assert deadline_after("06:00", now) - now == timedelta(hours=7)  # tomorrow morning
    assert deadline_after("23:30", now) - now == timedelta(minutes=30)
    assert deadline_after("2026-11-30T01:00:00+00:00", now).tzinfo is not None
    with pytest.raises(ValueError, match="HH:MM or an ISO-8601"):
        deadline_after("tonight", now)


def test_until_is_fixed_when_the_command_starts() -> None:
    """--until HH:MM is the moment it named when the settings were built: once a prompt or a
    long scan has crossed it, the deadline has passed (negative), not moved to tomorrow."""
    from datetime import datetime, timedelta  # noqa: PLC0415

    start = datetime.now().astimezone()
    soon = (start + timedelta(minutes=2)).strftime("%H:%M")
    settings = load_settings(
        {"until": soon, "ledger": "x.sqlite"}, env_file=None, environment=False
    )
    ahead = settings.deadline_in_s(start)
    assert ahead is not None
    assert 0 < ahead <= 120
    later = start + timedelta(minutes=5)  # the prompt was answered three minutes late
    passed = settings.deadline_in_s(later)
    assert passed is not None
    assert passed < 0
