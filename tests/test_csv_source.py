"""The CSV/text reader: encodings, line endings, headers, columns, blanks, bad input."""

from __future__ import annotations

from pathlib import Path

import pytest

from worker.domain.errors import InputError
from worker.domain.models import Outcome
from worker.sources import IdValidator
from worker.sources.csv_file import CsvSource

PATTERN = IdValidator("^[A-Z]{3}[0-9]{10}$")
A, B, C = "ABC0000000001", "ABC0000000002", "ABC0000000003"


def _ids(path: Path, column: str | None = None) -> list[str]:
    source = CsvSource(path, PATTERN, column)
    return [order_id for batch in source.batches(2) for order_id, _ in batch]


def _file(tmp_path: Path, data: bytes) -> Path:
    path = tmp_path / "in.csv"
    path.write_bytes(data)
    return path


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (f"{A}\n{B}\n".encode(), [A, B]),  # no header: the first line is an ID
        (f"orderId\n{A}\n{B}".encode(), [A, B]),  # no final newline
        (f"ORDER_ID\r\n{A}\r\n{B}\r\n".encode(), [A, B]),  # CRLF, header in any case
        (f"\ufeffid\n{A}\n".encode(), [A]),  # UTF-8 BOM
        (f"\ufeff{A}\n{B}\n".encode(), [A, B]),  # BOM and no header
        (f"name,customerOrderId\nx,{A}\ny,{B}\n".encode(), [A, B]),  # header names the column
        (f'note,id\n"a, b",{A}\n"say ""hi""",{B}\n'.encode(), [A, B]),  # quoted commas, quotes
        (f"reference;note\n{A};x\n{B};y\n".encode(), [A, B]),  # semicolons, unknown header
        (f"id\tnote\n{A}\tx\n".encode(), [A]),  # tabs
        (f"\n\nid\n\n  {A}  \n\t\n{B}\n\n".encode(), [A, B]),  # blank lines and whitespace
        # a row with content but no ID is kept (recorded invalid), not skipped
        (f"id,other\n{A},1\n,2\n{B},3\n".encode(), [A, "(no ID: line 3)", B]),
        (b"", []),  # empty file
        (b"orderId\n", []),  # header only
        (f"{A}\n{A}\n".encode(), [A, A]),  # duplicates are the ledger's business
        (f"ABC123\n{A}\n".encode(), ["ABC123", A]),  # a malformed first ID is data, not a header
        (f"Numero de commande\n{A}\n".encode(), [A]),  # no digit: a header
    ],
)
def test_reads_ids(tmp_path: Path, data: bytes, expected: list[str]) -> None:
    """IDs come out in order, trimmed, with headers and blanks left out."""
    assert _ids(_file(tmp_path, data)) == expected


def test_column_flag(tmp_path: Path) -> None:
    """--column picks a column by its header name, in any case."""
    path = _file(tmp_path, f"id,Ref\nx,{A}\ny,{B}\n".encode())
    assert _ids(path, "ref") == [A, B]


def test_unknown_column(tmp_path: Path) -> None:
    """A --column that is not in the header is an error naming file, line and the columns."""
    path = _file(tmp_path, f"id,ref\n{A},x\n".encode())
    expected = r"in\.csv:1: no column 'nope' in the header \(columns: id, ref\)"
    with pytest.raises(InputError, match=expected):
        CsvSource(path, PATTERN, "nope").scan()


def test_invalid_ids_are_results(tmp_path: Path) -> None:
    """IDs failing the pattern come back as `invalid` results naming file and line."""
    path = _file(tmp_path, f"id\n{A}\nabc\n{B}x\n".encode())
    items = [item for batch in CsvSource(path, PATTERN).batches(10) for item in batch]
    assert items[0] == (A, None)
    bad = [r for _, r in items if r is not None]
    assert [r.outcome for r in bad] == [Outcome.INVALID, Outcome.INVALID]
    assert [r.error_code for r in bad] == ["WRONG_FORMAT", "WRONG_FORMAT"]
    assert bad[0].message is not None
    assert bad[0].message.startswith(f"{path}:3: does not match")


def test_long_invalid_id_is_shortened(tmp_path: Path) -> None:
    """A huge value is recorded shortened, not whole."""
    path = _file(tmp_path, ("id\n" + "X" * 5000 + "\n").encode())
    ((order_id, result),) = next(CsvSource(path, PATTERN).batches(10))
    assert result is not None
    assert len(order_id) < 200


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (f"{A}\n{B}\n\xff\xfe\n".encode("latin-1"), r"in\.csv:3: not valid UTF-8"),
        (f"{A}\n".encode() + b"x" * 300_000 + b"\n", r"in\.csv:2: line longer than"),
        (f'id\n{A}\n"unclosed\n'.encode() + b"y" * 200_000, r"in\.csv:\d+: "),
    ],
)
def test_unreadable_input(tmp_path: Path, data: bytes, message: str) -> None:
    """Undecodable or overlong input stops with the file and line named, at scan time."""
    with pytest.raises(InputError, match=message):
        CsvSource(_file(tmp_path, data), PATTERN).scan()


def test_missing_file(tmp_path: Path) -> None:
    """A missing file is an InputError naming it."""
    with pytest.raises(InputError, match=r"nothere\.csv: cannot read"):
        CsvSource(tmp_path / "nothere.csv", PATTERN).scan()


def test_scan_counts_ids(tmp_path: Path) -> None:
    """scan counts non-blank values, header excluded."""
    assert CsvSource(_file(tmp_path, f"id\n{A}\n\n{B}\nbad\n".encode()), PATTERN).scan() == 3


def test_pattern_must_match_whole_id() -> None:
    """A pattern without anchors still has to match the whole ID."""
    validator = IdValidator("[A-Z]{3}[0-9]{10}")
    assert validator.matches(A)
    assert not validator.matches(A + "/../x")


def test_headers_by_their_letters(tmp_path: Path) -> None:
    """ "Order ID", "ORDER-ID", "customer_order_id" name the ID column: case, spaces, '_' and
    '-' are ignored."""
    for header in ("Order ID", "ORDER-ID", "customer_order_id", " Id "):
        path = _file(tmp_path, f"note;{header}\nx;{A}\ny;{B}\n".encode())
        assert _ids(path) == [A, B], header
