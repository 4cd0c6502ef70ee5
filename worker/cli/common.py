"""What every command shares: usage errors on one line, the settings from flags, writing to a
stream that may be closed, and the process's hardening (owner-only files, no core dumps,
a warning for a secret given as a flag)."""

from __future__ import annotations

import argparse
import os
import resource
import shlex
import sys
from collections.abc import Callable, Sequence
from contextlib import suppress
from pathlib import Path
from typing import Any, NoReturn, TextIO

import structlog

from worker.domain.credentials import host_only, mask_urls
from worker.domain.errors import ConfigError
from worker.domain.models import Outcome
from worker.runtime.logs import configure, silence
from worker.runtime.redaction import redact
from worker.settings import FILES_READ, Settings, load_settings

log = structlog.get_logger(__name__)

SECRET_FLAGS = ("--client-secret", "--api-key", "--access-token", "--plan-key")
WEBHOOK_FLAGS = ("--notify-url",)  # a webhook URL's path is its secret: shown as its host


class Parser(argparse.ArgumentParser):
    """argparse, with usage errors on one line and exit status 2, and no abbreviated long
    flags: a secret flag has one spelling, so it is always masked and warned about."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["allow_abbrev"] = False
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def settings_from(args: argparse.Namespace, keys: Sequence[str]) -> Settings:
    flags = {key: getattr(args, key, None) for key in keys}
    flags = {k: ",".join(v) if isinstance(v, list) else v for k, v in flags.items()}
    settings = load_settings(flags, args.config)
    configure(settings.log_format, settings.log_level, settings.secrets(), settings.log_file)
    if FILES_READ:
        log.info("settings_files", files=list(FILES_READ))
    if settings.core_dumps:
        _allow_core_dumps()
    warn_secret_flags(getattr(args, "argv", []))
    return settings


def masked_command_line(argv: Sequence[str]) -> str:
    """The command line as given, as it may be recorded and shown: a secret flag's value
    ``***``, a webhook URL its host, the credentials of every other URL masked, and any known
    secret redacted wherever it stands."""
    words: list[str] = []
    hide: Callable[[str], str] | None = None  # how the next word (a flag's value) is shown
    for word in argv:
        if hide is not None:
            words.append(hide(word))
            hide = None
            continue
        name, eq, value = word.partition("=")
        how = _HIDDEN.get(name)
        if how is None:
            words.append(mask_urls(word))
        elif eq:
            words.append(f"{name}={how(value)}")
        else:
            words.append(word)
            hide = how
    return "cancel-orders " + shlex.join(redact.clean(words))


def _hosts(urls: str) -> str:
    return ",".join(host_only(url) for url in urls.split(","))


_HIDDEN: dict[str, Callable[[str], str]] = {
    **dict.fromkeys(SECRET_FLAGS, lambda _value: "***"),
    **dict.fromkeys(WEBHOOK_FLAGS, _hosts),
}


def say(stream: TextIO, text: str) -> None:
    """Write and flush; a stream that cannot be written is pointed at /dev/null instead."""
    try:
        stream.write(text)
        stream.flush()
    except (OSError, ValueError):
        silence(stream)


def add_no_progress(parser: argparse.ArgumentParser) -> None:
    """``--no-progress``, for every command that shows progress on a terminal."""
    parser.add_argument("--no-progress", action="store_true", help="no progress display")


def add_report_format(parser: argparse.ArgumentParser, *, html: bool = False) -> None:
    formats = ("table", "json", "csv", "html") if html else ("table", "json", "csv")
    parser.add_argument("--format", choices=formats, default="table")
    parser.add_argument(
        "--output", metavar="FILE", type=Path, help="write there (owner-only) instead of stdout"
    )
    parser.add_argument(
        "--outcome",
        choices=[o.value for o in Outcome],
        metavar="NAME",
        help="only orders with this outcome",
    )


_CORE_LIMIT: tuple[int, int] | None = None  # as the process started


def harden() -> None:
    """Files owner-only; no core dump (it would hold the secret, the key and the token) unless
    the settings allow them (core_dumps: the limit is restored then)."""
    global _CORE_LIMIT  # noqa: PLW0603 - the process's own limit, read once
    os.umask(0o077)  # the ledger, its WAL and every report file: readable by their owner only
    with suppress(ValueError, OSError):
        _CORE_LIMIT = resource.getrlimit(resource.RLIMIT_CORE)
        resource.setrlimit(resource.RLIMIT_CORE, (0, _CORE_LIMIT[1]))


def _allow_core_dumps() -> None:
    if _CORE_LIMIT is not None:
        with suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_CORE, _CORE_LIMIT)


def warn_secret_flags(argv: Sequence[str]) -> None:
    """A secret given as a flag stays visible in `ps` for the whole run: say so, and how else."""
    given = sorted({a.split("=", 1)[0] for a in argv if a.split("=", 1)[0] in SECRET_FLAGS})
    if given:
        log.warning(
            "secret_on_command_line",
            flags=given,
            detail="visible to every user of this host in `ps` while the run lasts; pass it in "
            "the environment (MOUVONE_CLIENT_SECRET, MOUVONE_API_KEY, MOUVONE_ACCESS_TOKEN) or "
            "a file only you can read (--client-secret-file, --api-key-file)",
        )


def terminal() -> TextIO | None:
    """Where a person can answer: standard input when it is the terminal, else the terminal
    itself (the orders may come on standard input); None without one."""
    if sys.stdin.isatty():
        return open(os.dup(sys.stdin.fileno()), encoding="utf-8")  # noqa: PTH123
    try:
        return open("/dev/tty", encoding="utf-8")  # noqa: PTH123 - closed by the caller
    except OSError:
        return None


def confirm(prompt: str) -> None:
    """Ask a person for "yes" (on the terminal, even when the orders come on standard input);
    ConfigError (exit 2, nothing done) when nobody can be asked or the answer is not yes."""
    answer_from = terminal()
    if answer_from is None:
        raise ConfigError("not on a terminal, so nobody can confirm: pass --yes to go on")
    say(sys.stderr, prompt)
    with answer_from:
        if answer_from.readline().strip().lower() != "yes":
            raise ConfigError("not confirmed: nothing was sent")
