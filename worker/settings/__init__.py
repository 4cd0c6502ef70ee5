"""Settings: built once at the edge, frozen, passed down. No other module reads the environment.

Precedence, highest first: command-line flags, the environment (``MOUVONE_*``), a ``.env`` file,
the ``--config`` TOML file, then the defaults shipped in ``config/defaults.toml``.
"""

from worker.settings.fields import (
    DEFAULT_NAMESPACE,
    ENV_PREFIX,
    INTEGRATION_BASE_URL,
    TargetSpec,
)
from worker.settings.loading import given_elsewhere, load_settings, revalidated
from worker.settings.model import Settings
from worker.settings.sources import FILES_READ
from worker.settings.values import deadline_after, duration_s, is_loopback, safe_url

__all__ = [
    "DEFAULT_NAMESPACE",
    "ENV_PREFIX",
    "FILES_READ",
    "INTEGRATION_BASE_URL",
    "Settings",
    "TargetSpec",
    "deadline_after",
    "duration_s",
    "given_elsewhere",
    "is_loopback",
    "load_settings",
    "revalidated",
    "safe_url",
]
