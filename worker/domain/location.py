"""Where a ledger lives: a SQLite file (a path) or a PostgreSQL database (a ``postgresql://``
URL). The URL prints with its password masked, wherever it is shown."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pydantic_core import core_schema

from worker.domain.credentials import mask_url, url_secrets

SCHEMES = ("postgresql", "postgres")


class PostgresUrl:
    """A ``postgresql://USER[:PASSWORD]@HOST[:PORT]/DB[?...]`` ledger."""

    __slots__ = ("dsn",)

    def __init__(self, dsn: str) -> None:
        parts = urlsplit(dsn)
        if parts.scheme not in SCHEMES or not parts.hostname:
            raise ValueError(f"{mask_url(dsn)}: a PostgreSQL ledger is postgresql://USER@HOST/DB")
        self.dsn = dsn

    @property
    def secrets(self) -> list[str]:
        """The URL's credentials (redacted from every output): its userinfo password and
        libpq's ``?password=`` and ``?sslpassword=``."""
        return url_secrets(self.dsn)

    def __str__(self) -> str:
        return mask_url(self.dsn)

    def __repr__(self) -> str:
        return f"PostgresUrl({str(self)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PostgresUrl) and other.dsn == self.dsn

    def __hash__(self) -> int:
        return hash(self.dsn)

    @classmethod
    def __get_pydantic_core_schema__(cls, _source: Any, _handler: Any) -> core_schema.CoreSchema:
        return core_schema.no_info_plain_validator_function(
            _validate, serialization=core_schema.to_string_ser_schema()
        )


def _validate(value: object) -> PostgresUrl:
    if isinstance(value, PostgresUrl):
        return value
    if isinstance(value, str) and value.split("://", 1)[0] in SCHEMES and "://" in value:
        return PostgresUrl(value)
    raise ValueError("not a postgresql:// URL")


Location = PostgresUrl | Path
