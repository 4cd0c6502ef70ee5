"""The .env source: its MOUVONE_ lines, read only from a file its owner alone may write."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

from dotenv import dotenv_values
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource

from worker.domain.errors import ConfigError
from worker.settings.fields import ENV_PREFIX

FILES_READ: list[str] = []  # the settings files the last load_settings read


def check_private(path: Path) -> None:
    """A settings file that someone else could have written is refused: it could send the
    credentials to another host."""
    st = path.stat()
    if st.st_uid != os.getuid() or st.st_mode & 0o022:
        raise ConfigError(
            f"{path}: not read: it belongs to another user or others may write it "
            f"(mode {stat.filemode(st.st_mode)}); make it yours with chmod go-w, or remove it"
        )


class PrefixedDotEnv(PydanticBaseSettingsSource):
    """The ``MOUVONE_*`` lines of a .env file; its other lines belong to other programs."""

    def __init__(self, settings_cls: type[BaseSettings], path: Path | None) -> None:
        super().__init__(settings_cls)
        self._values: dict[str, Any] = {}
        if path is not None and path.is_file():
            check_private(path)
            # No interpolation: "${MOUVONE_API_KEY}" in a value stays that text.
            for key, value in dotenv_values(path, interpolate=False).items():
                if key.upper().startswith(ENV_PREFIX) and value is not None:
                    self._values[key[len(ENV_PREFIX) :].lower()] = value
            FILES_READ.append(str(path))

    def get_field_value(
        self,
        field: FieldInfo,  # noqa: ARG002 - the base class's signature
        field_name: str,
    ) -> tuple[Any, str, bool]:
        """Unused: __call__ returns everything at once."""
        return self._values.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        """Settings found in the file, by field name."""
        return dict(self._values)
