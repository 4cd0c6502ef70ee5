"""The ledger: claims, resume, duplicates, idempotent upserts, no downgrade, locking, schema."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from worker.domain.errors import LedgerError
from worker.domain.models import Outcome, Result
from worker.ledger import SCHEMA_VERSION, Ledger

A, B, C = "ABC0000000001", "ABC0000000002", "ABC0000000003"


@pytest.fixture
def ledger(tmp_path: Path) -> Ledger:
    opened = Ledger(tmp_path / "l.sqlite")
    yield opened
    opened.close()


def _row(ledger: Ledger, order_id: str) -> tuple[object, ...]:
    return next(r for r in ledger.rows() if r[0] == order_id)


def test_claim_marks_pending_and_dedupes(ledger: Ledger) -> None:
    """New orders become pending under the run; repeats in the same run are duplicates."""
    plan = ledger.claim([(A, None), (B, None), (A, None)], "run1")
    assert plan.to_send == [A, B]
    assert plan.duplicates == 1
    again = ledger.claim([(B, None), (C, None)], "run1")
    assert again.to_send == [C]
    assert again.duplicates == 1
    assert _row(ledger, A)[1] == "pending"


def test_resume_skips_final_only(ledger: Ledger) -> None:
    """A later run skips final orders and takes pending and retryable_failed ones again."""
    ledger.claim([(A, None), (B, None), (C, None)], "run1")
    ledger.record(
        [
            Result(A, Outcome.CANCELLED, 200, None, None, 1),
            Result(B, Outcome.RETRYABLE_FAILED, 503, "HTTP_503", None, 5),
        ],
        "run1",
    )
    plan = ledger.claim([(A, None), (B, None), (C, None)], "run2")
    assert plan.to_send == [B, C]
    assert plan.skipped == ["cancelled"]


def test_force_takes_final_orders(ledger: Ledger) -> None:
    """--force sends final orders again."""
    ledger.claim([(A, None)], "run1")
    ledger.record([Result(A, Outcome.REJECTED, 400, "R0008", None, 1)], "run1")
    assert ledger.claim([(A, None)], "run2", force=True).to_send == [A]


def test_final_is_never_downgraded_to_pending(ledger: Ledger) -> None:
    """An interrupted resend (pending) does not erase a recorded final outcome."""
    ledger.claim([(A, None)], "run1")
    ledger.record([Result(A, Outcome.CANCELLED, 200, None, None, 1)], "run1")
    ledger.record([Result(A, Outcome.PENDING, None, None, "interrupted", 1)], "run2")
    assert _row(ledger, A)[1] == "cancelled"
    ledger.record(
        [Result(A, Outcome.ALREADY_CANCELLED, 400, "ORDER_ALREADY_CANCELED", None, 1)], "run2"
    )
    assert _row(ledger, A)[1] == "already_cancelled"


def test_record_is_idempotent(ledger: Ledger) -> None:
    """Recording the same result twice leaves one row."""
    result = Result(A, Outcome.CANCELLED, 200, None, None, 1)
    ledger.record([result], "run1")
    ledger.record([result], "run1")
    assert [r[0] for r in ledger.rows()] == [A]


def test_invalid_ids_are_recorded(ledger: Ledger) -> None:
    """Invalid IDs are written with WRONG_FORMAT and never queued."""
    bad = Result("x", Outcome.INVALID, None, "WRONG_FORMAT", "in.csv:2: does not match", 0)
    plan = ledger.claim([("x", bad), (A, None)], "run1")
    assert plan.to_send == [A]
    assert _row(ledger, "x")[1:4] == ("invalid", None, "WRONG_FORMAT")


def test_dry_claim_writes_nothing(tmp_path: Path, ledger: Ledger) -> None:
    """A dry claim dedupes across batches without touching the ledger file."""
    ledger.claim([(A, None)], "run1")
    ledger.record([Result(A, Outcome.CANCELLED, 200, None, None, 1)], "run1")
    ledger.close()
    readonly = Ledger(tmp_path / "l.sqlite", readonly=True)
    try:
        first = readonly.claim([(A, None), (B, None)], "dry", dry=True)
        second = readonly.claim([(B, None), (C, None)], "dry", dry=True)
    finally:
        readonly.close()
    assert (first.to_send, first.skipped) == ([B], ["cancelled"])
    assert (second.to_send, second.duplicates) == ([C], 1)
    reopened = Ledger(tmp_path / "l.sqlite")
    assert [r[0] for r in reopened.rows()] == [A]
    reopened.close()


def test_candidates_for_retry(ledger: Ledger) -> None:
    """retry takes pending and retryable_failed orders, keyset-paged in ID order."""
    ledger.claim([(A, None), (B, None), (C, None)], "run1")
    ledger.record([Result(B, Outcome.CANCELLED, 200, None, None, 1)], "run1")
    wanted = (Outcome.PENDING, Outcome.RETRYABLE_FAILED)
    assert ledger.candidates(wanted, "", 1) == [A]
    assert ledger.candidates(wanted, A, 10) == [C]


def test_one_writer_at_a_time(tmp_path: Path, ledger: Ledger) -> None:
    """A second run on the same ledger is refused while the first holds it."""
    with pytest.raises(LedgerError, match="in use by another run"):
        Ledger(tmp_path / "l.sqlite")


def test_wal_and_schema_version(tmp_path: Path, ledger: Ledger) -> None:
    """The file is in WAL mode and carries its schema version."""
    db = sqlite3.connect(tmp_path / "l.sqlite")
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    db.close()


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    """A ledger written by a newer version is not touched."""
    path = tmp_path / "new.sqlite"
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.close()
    with pytest.raises(LedgerError, match="newer than this tool"):
        Ledger(path)


def test_file_is_private(tmp_path: Path) -> None:
    """A new ledger is readable by its owner only."""
    path = tmp_path / "p.sqlite"
    Ledger(path).close()
    assert path.stat().st_mode & 0o077 == 0


def test_unwritable_location(tmp_path: Path) -> None:
    """A ledger in a missing folder is a LedgerError naming the path."""
    with pytest.raises(LedgerError, match=r"missing/l\.sqlite: cannot open the ledger"):
        Ledger(tmp_path / "missing" / "l.sqlite")


def test_readonly_needs_a_file(tmp_path: Path) -> None:
    """report and retry on a ledger that does not exist say so."""
    with pytest.raises(LedgerError, match="no ledger at this path"):
        Ledger(tmp_path / "none.sqlite", readonly=True)


def test_counts(ledger: Ledger) -> None:
    """Counts by outcome and error code, optionally for one outcome."""
    ledger.record(
        [
            Result(A, Outcome.REJECTED, 400, "R0008", None, 1),
            Result(B, Outcome.REJECTED, 400, "R0009", None, 1),
            Result(C, Outcome.CANCELLED, 200, None, None, 1),
        ],
        "run1",
    )
    assert ledger.counts() == ({"rejected": 2, "cancelled": 1}, {"R0008": 1, "R0009": 1})
    assert ledger.counts("cancelled") == ({"cancelled": 1}, {})
