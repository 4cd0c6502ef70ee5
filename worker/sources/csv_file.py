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

from worker.domain.errors import InputError
from worker.domain.models import Outcome, Result
from worker.sources import Batch, IdValidator

log = structlog.get_logger(__name__)

ID_HEADERS = ("orderid", "customerorderid", "id")  # by their letters: "Order ID" is one
FIELD_LIMIT = 128 * 1024  # csv's own default; a longer field is an error naming its line
SAMPLE_ROWS = 1000  # rows looked at to tell the ID column from the others
WRONG_COLUMN_SHARE = 0.5  # under this share of valid IDs, the chosen column looks wrong...
RIGHT_COLUMN_SHARE = 0.8  # ...when another column holds at least this share


def header_key(cell: str) -> str:
    """A header cell by its letters and digits only: case, spaces, '_' and '-' ignored."""
    return "".join(ch for ch in cell.lower() if ch.isalnum())


class CsvSource:
    """Reads IDs from a CSV or text file, one row at a time.

    The ID column is ``column``, else a header named like an order ID column, else the first
    column; a first line whose first value is an ID, well-formed or not (it has a digit, which
    header names do not), means there is no header, so a bad first ID is recorded, not lost.
    UTF-8 with or without BOM, LF or CRLF, comma, semicolon or tab separated. Blank values are
    skipped.
    """

    def __init__(
        self,
        path: Path,
        validator: IdValidator,
        column: str | None = None,
        name: str | None = None,
        encoding: str = "utf-8",
    ) -> None:
        self.path = path
        self.name = name or str(path)
        self._validator = validator
        self._column = column
        self._encoding = encoding
        self._announced = False
        self.layout: dict[str, str] = {}  # the column, separator and encoding read (for people)
        self._sample: list[list[str]] = []  # the first rows, to check the column chosen
        self._header_cells: list[str] = []

    def scan(self) -> int:
        """Read everything once; the count of non-blank IDs. InputError for unreadable input,
        or for an ID column that holds few IDs while another holds many (naming it)."""
        count = sum(1 for _ in self._values())
        self._check_column()
        return count

    def _check_column(self) -> None:
        """A column chosen by its header (or by default) that holds few valid IDs while
        another holds many is a swapped file: refuse, naming the right column. A column the
        operator named with --column is theirs to choose."""
        rows, chosen = self._sample, self.layout.get("index")
        if self._column is not None or not rows or chosen is None or len(rows) < 2:
            return
        index = int(chosen)
        width = max(len(r) for r in rows)
        valid = [
            sum(1 for r in rows if c < len(r) and self._validator.matches(r[c].strip()))
            for c in range(width)
        ]
        if valid[index] >= WRONG_COLUMN_SHARE * len(rows):
            return
        best = max(range(width), key=lambda c: valid[c])
        if best != index and valid[best] >= RIGHT_COLUMN_SHARE * len(rows):
            names = self._header_cells or [str(c + 1) for c in range(width)]
            right = names[best] if best < len(names) else str(best + 1)
            raise InputError(
                f"{self.name}: the ID column {self.layout.get('column')!r} holds "
                f"{valid[index]} valid order IDs in its first {len(rows)} rows, column "
                f"{right!r} holds {valid[best]}: pass --column {right!r}"
            )

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
        except LookupError:
            raise InputError(f"{self.name}: unknown encoding {self._encoding!r}") from None
        except OSError as exc:
            raise InputError(f"{self.name}: cannot read: {exc.strerror or exc}") from None

    def _rows(self, handle: IO[bytes]) -> Iterator[tuple[int, str]]:
        lines = _LineCounter(handle, self.name, self._encoding)
        sample = self._sample
        sample.clear()
        try:
            first = lines.first_content_line()
            if first is None:
                return
            dialect = _dialect(first)
            csv.field_size_limit(FIELD_LIMIT)
            first_row = next(csv.reader([first], dialect=dialect), [])
            index, header = self._header(first_row, lines.number)
            self._header_cells = [c.strip() for c in first_row] if header is not None else []
            self.layout = {
                "column": first_row[index].strip() if header is not None else f"{index + 1}",
                "index": str(index),
                "separator": dialect.delimiter,
                "encoding": self._encoding,
            }
            if header is None:
                sample.append(first_row)
                yield lines.number, first_row[0].strip()
            for row in csv.reader(lines, dialect=dialect):
                if len(sample) < SAMPLE_ROWS and any(cell.strip() for cell in row):
                    sample.append(row)
                if index < len(row) and (value := row[index].strip()):
                    yield lines.number, value
                elif any(cell.strip() for cell in row):  # content, but no ID: never dropped
                    yield lines.number, ""
        except csv.Error as exc:
            raise InputError(f"{self.name}:{lines.number}: {exc}") from None

    def _header(self, row: list[str], line: int) -> tuple[int, str | None]:
        """(column index, header text or None when the first line is data)."""
        cells = [header_key(cell) for cell in row]
        if self._column is not None:
            wanted = header_key(self._column)
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

    def __init__(self, handle: IO[bytes], name: str, encoding: str = "utf-8") -> None:
        self._handle = handle
        self._name = name
        self._encoding = codecs.lookup(encoding).name
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
        if self.number == 1 and raw.startswith(codecs.BOM_UTF8) and self._encoding == "utf-8":
            raw = raw[len(codecs.BOM_UTF8) :]
        try:
            return raw.decode(self._encoding)
        except UnicodeDecodeError as exc:
            where = f"{self._name}:{self.number}"
            if self._encoding == "utf-8":
                raise InputError(
                    f"{where}: not valid UTF-8 ({exc.reason}): a spreadsheet export may be in "
                    "another encoding, e.g. --encoding cp1252"
                ) from None
            raise InputError(f"{where}: not valid {self._encoding} ({exc.reason})") from None

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
