"""Order IDs from a CSV file, a text file with one ID a line, or standard input (spooled)."""

from __future__ import annotations

import codecs
import csv
import itertools
import shutil
import stat
import sys
import tempfile
from collections.abc import Iterator
from contextlib import suppress
from pathlib import Path
from typing import IO

import structlog

from worker.errors import InputError
from worker.models import Outcome, Result
from worker.sources import Batch, IdValidator

log = structlog.get_logger(__name__)

ID_HEADERS = ("orderid", "order_id", "customerorderid", "id")
FIELD_LIMIT = 128 * 1024  # csv's own default; a longer field is an error naming its line


class CsvSource:
    """Reads IDs from a CSV or text file, one row at a time.

    The ID column is ``column``, else a header named like an order ID column, else the first
    column; a first line whose first value is an ID, well-formed or not (it has a digit, which
    header names do not), means there is no header, so a bad first ID is recorded, not lost.
    UTF-8 with or without BOM, LF or CRLF, comma, semicolon or tab separated. Blank values are
    skipped.
    """

    def __init__(
        self, path: Path, validator: IdValidator, column: str | None = None, name: str | None = None
    ) -> None:
        self.path = path
        self.name = name or str(path)
        self._validator = validator
        self._column = column
        self._announced = False

    def scan(self) -> int:
        """Read everything once; the count of non-blank IDs. InputError for unreadable input."""
        return sum(1 for _ in self._values())

    def batches(self, size: int) -> Iterator[Batch]:
        """Validated IDs in input order, ``size`` at a time; a row with content but no ID is
        an `invalid` one, named by its line."""
        check = self._validator.check

        def checked(line: int, value: str) -> tuple[str, Result | None]:
            where = f"{self.name}:{line}"
            if value:
                return check(value, where)
            stored = f"(no ID: line {line})"
            message = f"{where}: the row has no order ID in its ID column"
            return stored, Result(stored, Outcome.INVALID, None, "WRONG_FORMAT", message, 0)

        values = (checked(line, value) for line, value in self._values())
        while chunk := list(itertools.islice(values, size)):
            yield chunk

    def _values(self) -> Iterator[tuple[int, str]]:
        try:
            with self.path.open("rb") as handle:
                yield from self._rows(handle)
        except OSError as exc:
            raise InputError(f"{self.name}: cannot read: {exc.strerror or exc}") from None

    def _rows(self, handle: IO[bytes]) -> Iterator[tuple[int, str]]:
        lines = _LineCounter(handle, self.name)
        try:
            first = lines.first_content_line()
            if first is None:
                return
            dialect = _dialect(first)
            csv.field_size_limit(FIELD_LIMIT)
            first_row = next(csv.reader([first], dialect=dialect), [])
            index, header = self._header(first_row, lines.number)
            if header is None:
                yield lines.number, first_row[0].strip()
            for row in csv.reader(lines, dialect=dialect):
                if index < len(row) and (value := row[index].strip()):
                    yield lines.number, value
                elif any(cell.strip() for cell in row):  # content, but no ID: never dropped
                    yield lines.number, ""
        except csv.Error as exc:
            raise InputError(f"{self.name}:{lines.number}: {exc}") from None

    def _header(self, row: list[str], line: int) -> tuple[int, str | None]:
        """(column index, header text or None when the first line is data)."""
        cells = [cell.strip().lower() for cell in row]
        if self._column is not None:
            wanted = self._column.strip().lower()
            if wanted in cells:
                return cells.index(wanted), ",".join(row)
            raise InputError(
                f"{self.name}:{line}: no column {self._column!r} in the header "
                f"(columns: {', '.join(c.strip() for c in row) or 'none'})"
            )
        for name in ID_HEADERS:
            if name in cells:
                return cells.index(name), ",".join(row)
        first = row[0].strip() if row else ""
        if self._validator.matches(first) or any(ch.isdigit() for ch in first):
            # An ID, or a malformed one (headers have no digits): data, to be recorded.
            return 0, None
        if not self._announced:
            self._announced = True
            log.info("header_assumed", file=self.name, line=line, header=",".join(row)[:200])
        return 0, ",".join(row)


class _LineCounter:
    """Iterates decoded lines, counting them; an undecodable or overlong line is an InputError."""

    def __init__(self, handle: IO[bytes], name: str) -> None:
        self._handle = handle
        self._name = name
        self.number = 0

    def __iter__(self) -> Iterator[str]:
        return self

    def __next__(self) -> str:
        raw = self._handle.readline(FIELD_LIMIT)
        if not raw:
            raise StopIteration
        self.number += 1
        if len(raw) == FIELD_LIMIT and not raw.endswith(b"\n"):
            raise InputError(f"{self._name}:{self.number}: line longer than {FIELD_LIMIT} bytes")
        if self.number == 1 and raw.startswith(codecs.BOM_UTF8):
            raw = raw[len(codecs.BOM_UTF8) :]
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            where = f"{self._name}:{self.number}"
            raise InputError(f"{where}: not valid UTF-8 ({exc.reason})") from None

    def first_content_line(self) -> str | None:
        """The first line that is not blank, or None for an empty input."""
        for line in self:
            if line.strip():
                return line
        return None


def _dialect(first_line: str) -> type[csv.Dialect]:
    if "," not in first_line and ";" in first_line:
        return _Semicolon
    if "," not in first_line and "\t" in first_line:
        return csv.excel_tab
    return csv.excel


class _Semicolon(csv.excel):
    delimiter = ";"


def needs_spooling(path: Path) -> bool:
    """True for an input that can be read only once: a pipe, a process substitution
    (``<(...)``), ``/dev/stdin``, a character device. A directory or a missing file is left to
    the reader, which names the problem."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return False
    return not (stat.S_ISREG(mode) or stat.S_ISDIR(mode))


def spool_stdin(directory: Path | None = None, source: Path | None = None) -> Path:
    """Copy standard input (or ``source``, an input that can be read only once) to a private
    temporary file, so that it can be counted and checked before anything is sent."""
    handle = tempfile.NamedTemporaryFile(  # noqa: SIM115 - the caller owns and removes the file
        prefix="cancel-orders-stdin-", suffix=".csv", dir=directory, delete=False
    )
    try:
        with handle:
            if source is None:
                shutil.copyfileobj(sys.stdin.buffer, handle, 1 << 20)
            else:
                try:
                    with source.open("rb") as once:
                        shutil.copyfileobj(once, handle, 1 << 20)
                except OSError as exc:
                    raise InputError(f"{source}: cannot read: {exc.strerror or exc}") from None
    except BaseException:
        with suppress(OSError):
            Path(handle.name).unlink()
        raise
    return Path(handle.name)
