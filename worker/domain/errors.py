"""A small hierarchy of the truly exceptional; expected API answers are outcomes, not errors."""

from __future__ import annotations


class WorkerError(Exception):
    """Base of every error this tool raises on purpose."""

    exit_code = 1


class ConfigError(WorkerError):
    """Bad settings or usage: nothing was sent (exit 2)."""

    exit_code = 2


class InputError(WorkerError):
    """The input cannot be read (exit 2); names the file and the line."""

    exit_code = 2


class LedgerError(WorkerError):
    """The ledger cannot be opened or written (exit 2)."""

    exit_code = 2


class FatalApiError(WorkerError):
    """An answer that makes going on pointless or harmful: the run stops (exit 3)."""

    exit_code = 3


class ApiConfigError(FatalApiError):
    """A configuration error that shows only once the API or the token endpoint is asked (a
    redirect of the token request, a host that refuses): the run stops, exit 2."""

    exit_code = 2


class StoppedByLimitError(WorkerError):
    """Stopped early by a limit the operator set (exit 4): nothing wrong with the API."""

    exit_code = 4
