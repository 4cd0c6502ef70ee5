"""Property tests: the reader, the URL builder and the classifier hold for any input."""

from __future__ import annotations

import tempfile
from pathlib import Path
from urllib.parse import unquote

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from worker.api.client import order_url
from worker.domain.classifier import Action, OutcomeTable
from worker.domain.errors import InputError
from worker.domain.models import Outcome
from worker.sources import IdValidator
from worker.sources.csv_file import CsvSource

VALIDATOR = IdValidator("^[A-Z]{3}[0-9]{10}$")
TABLE = OutcomeTable.load()
BASE = "https://api.test/customer-orders/v1"


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2000))
def test_reader_never_fails_unexpectedly(data: bytes) -> None:
    """Any bytes give IDs (each valid, or with an `invalid` result) or one InputError."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "in.csv"
        path.write_bytes(data)
        source = CsvSource(path, VALIDATOR)
        error = ""
        try:
            count = source.scan()
        except InputError as exc:
            error = str(exc)
        if error:
            assert error.startswith(str(path))
            assert "\n" not in error
            return
        items = [item for batch in source.batches(7) for item in batch]
    assert len(items) == count
    for order_id, invalid in items:
        assert order_id
        assert order_id == order_id.strip() or invalid is not None
        if invalid is None:
            assert VALIDATOR.matches(order_id)
        else:
            assert invalid.outcome is Outcome.INVALID


@settings(max_examples=300, deadline=None)
@given(st.text(min_size=1, max_size=60))
def test_order_id_is_always_one_segment(order_id: str) -> None:
    """Whatever the ID, it stays one path segment and decodes back to itself."""
    prefix = "/customer-orders/v1/customer-orders/"
    path = order_url(BASE, order_id).raw_path
    assert path.startswith(prefix)
    segment = path[len(prefix) :]
    assert "/" not in segment
    assert "?" not in segment
    assert "#" not in segment
    assert segment not in {".", ".."}
    assert unquote(segment) == order_id


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(st.none(), st.integers(min_value=100, max_value=599)),
    st.one_of(st.none(), st.text(max_size=40)),
    st.one_of(st.none(), st.sampled_from(["timeout", "connection", "unreadable"])),
)
def test_classifier_is_total(status: int | None, code: str | None, failure: str | None) -> None:
    """Every answer gets a verdict; a server error or a transport fault is never final."""
    verdict = TABLE.classify(status, code, failure)
    assert isinstance(verdict.action, Action)
    if verdict.action is Action.FINAL:
        assert verdict.outcome is not None
    if failure is not None or (status is not None and status >= 500):
        assert verdict.action is not Action.FINAL
