"""Reading the settings: the .env file (its MOUVONE_ lines, only when private), the --config
file, the flags; a bad value becomes one line naming the setting, and where it came from when
that was not a flag."""

from __future__ import annotations

import os
import re
import tomllib
from contextlib import suppress
from pathlib import Path
from typing import Any

from dotenv import dotenv_values
from pydantic import ValidationError

from worker.domain.errors import ConfigError
from worker.settings.fields import ENV_PREFIX
from worker.settings.model import (
    Settings,
    config_file_var,
    dotenv_file_var,
    use_environment_var,
)
from worker.settings.sources import FILES_READ, check_private


def load_settings(
    flags: dict[str, Any],
    config_file: Path | None = None,
    env_file: Path | None = Path(".env"),
    *,
    environment: bool = True,
) -> Settings:
    """Build the settings from every source; a bad value is a one-line ConfigError.

    With ``environment=False`` only the flags and files count (the demo must not pick up a
    real credential from the environment).
    """
    if config_file is not None:
        if not config_file.is_file():
            raise ConfigError(f"{config_file}: config file not found")
        check_private(config_file)  # it can name the target, the proxy and --on-finish
    given = {key: value for key, value in flags.items() if value is not None}
    FILES_READ.clear()
    if config_file is not None:
        FILES_READ.append(str(config_file))
    token = config_file_var.set(config_file)
    env_token = use_environment_var.set(environment)
    dotenv_token = dotenv_file_var.set(env_file)
    try:
        return Settings(**given)
    except ValidationError as exc:
        key = ".".join(str(part) for part in exc.errors()[0]["loc"])
        source = None if key in given else _source(key, config_file, env_file, environment)
        raise ConfigError(_one_line(exc, config_file, source)) from None
    except (OSError, ValueError) as exc:  # unreadable or malformed TOML
        raise ConfigError(f"{config_file}: {exc}") from None
    finally:
        config_file_var.reset(token)
        use_environment_var.reset(env_token)
        dotenv_file_var.reset(dotenv_token)


def revalidated(settings: Settings, update: dict[str, Any], source: str) -> Settings:
    """``settings`` with ``update`` applied and checked like any value given (a copy with an
    update is not checked); a bad value is a ConfigError naming it and ``source``."""
    current = {key: getattr(settings, key) for key in Settings.model_fields}  # as they are
    try:
        return Settings.model_validate({**current, **update})
    except ValidationError as exc:
        raise ConfigError(f"{source}: {_one_line(exc, None)}") from None


def given_elsewhere(config_file: Path | None, env_file: Path | None = Path(".env")) -> set[str]:
    """The settings given by the environment, a .env file or the --config file (not by the
    shipped defaults): what a person chose, which a recorded value must not override."""
    given = {name for name in Settings.model_fields if f"{ENV_PREFIX}{name.upper()}" in os.environ}
    if env_file is not None and env_file.is_file():
        given |= {
            key[len(ENV_PREFIX) :].lower()
            for key in dotenv_values(env_file, interpolate=False)
            if key.upper().startswith(ENV_PREFIX)
        }
    if config_file is not None and config_file.is_file():
        with suppress(OSError, ValueError):
            given |= set(tomllib.loads(config_file.read_text(encoding="utf-8")))
    return given


def _source(
    key: str, config_file: Path | None, env_file: Path | None, environment: bool
) -> str | None:
    """Where a setting not given as a flag came from, in the order the sources count: the
    environment's variable, the .env file's line, the --config file's line; None when none
    of them sets it (the shipped defaults, or a rule across settings)."""
    if not key:
        return None
    variable = f"{ENV_PREFIX}{key.upper()}"
    if environment:
        if variable in os.environ:
            return f"from {variable} in the environment"
        line = _line_of(env_file, rf"(export\s+)?{variable}\s*=")
        if line is not None:
            return f"from {env_file} line {line}"
    line = _line_of(config_file, rf"{re.escape(key)}\s*=")
    return None if line is None else f"from {config_file} line {line}"


def _line_of(path: Path | None, pattern: str) -> int | None:
    """The number of the last line of ``path`` that starts with ``pattern`` (the one that
    counts, in a .env file that sets a variable twice), if any."""
    if path is None:
        return None
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, ValueError):
        return None
    found = re.compile(pattern, re.IGNORECASE)
    matching = [n for n, line in enumerate(lines, 1) if found.match(line.strip())]
    return matching[-1] if matching else None


def _one_line(exc: ValidationError, config_file: Path | None, source: str | None = None) -> str:
    first = exc.errors()[0]
    key = ".".join(str(part) for part in first["loc"])
    message = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        where = f"{config_file} or .env" if config_file else ".env"
        message = f"unknown setting (in {where})"
    elif source is not None:
        message = f"{message} ({source})"
    extra = f" (and {len(exc.errors()) - 1} more)" if len(exc.errors()) > 1 else ""
    if not key:  # a rule across settings: the message names them
        return f"invalid settings: {message}{extra}"
    return f"invalid setting {key}: {message}{extra}"
