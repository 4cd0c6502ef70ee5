"""The outcome table: every code of the API reference, every status class, transport faults."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from worker.domain.classifier import Action, OutcomeTable, error_code_for
from worker.domain.errors import ConfigError
from worker.domain.models import Outcome

TABLE = OutcomeTable.load()

# Every code listed in the API reference (shared/api/cancel-order.md) and what it must become.
REFERENCE_CODES = {
    "ACTOR_NOT_FOUND": Outcome.REJECTED,
    "ALREADY_JOINED_GROUP": Outcome.REJECTED,
    "CANNOT_CANCEL_NOT_MASTER_ORDER": Outcome.REJECTED,
    "CANNOT_CANCEL_ORDER_WITH_ASSOCIATED_CONTAINER": Outcome.REJECTED,
    "CANNOT_CHANGE_NUMBER_OF_CONTAINERS": Outcome.REJECTED,
    "CANNOT_UPDATE_VALID_ORDER_TO_DRAFT": Outcome.REJECTED,
    "CARRIER_EMAIL_REQUIRED": Outcome.REJECTED,
    "CONFLICT": Action.RETRY,
    "CONTRACTOR_UNAUTHORIZED_BY_GEDMOUV": Outcome.REJECTED,
    "CUSTOMER_ORDER_NOT_FOUND": Outcome.NOT_FOUND,
    "CUSTOMS_FLAG_NOT_BE_MODIFIED": Outcome.REJECTED,
    "EVENT_LOCATION_FIELDS_REQUIRED": Outcome.REJECTED,
    "EVENT_START_DATE_REQUIRED": Outcome.REJECTED,
    "EXISTS_ORDER_WITH_HANDLING_UNIT_SPI": Outcome.REJECTED,
    "HANDLING_UNIT_REFERENCE_INVALID": Outcome.REJECTED,
    "LIMIT_NONPOSITIVE": Outcome.REJECTED,
    "NOT_SUPPORTED_ORDER_TYPE": Outcome.REJECTED,
    "OFFSET_NEGATIVE": Outcome.REJECTED,
    "ORDER_ALREADY_CANCELED": Outcome.ALREADY_CANCELLED,
    "ORDER_DUPLICATED": Outcome.REJECTED,
    "ORGANIZATION_ACTOR_CODE_INVALID": Action.FATAL,
    "ORGANIZATION_NOT_FOUND": Action.FATAL,
    "R0005": Outcome.REJECTED,
    "R0006": Outcome.REJECTED,
    "R0007": Outcome.REJECTED,
    "R0008": Outcome.REJECTED,
    "R0009": Outcome.REJECTED,
    "SEARCH_DATE_ERROR": Outcome.REJECTED,
    "UNKNOWN_LOCATION": Outcome.REJECTED,
    "USER_ID_INVALID": Action.FATAL,
    "WRONG_EVENT_DATE_ORDER": Outcome.REJECTED,
    "WRONG_FORMAT": Outcome.INVALID,
    "A_CODE_NOBODY_HAS_SEEN": Outcome.REJECTED,
}


@pytest.mark.parametrize(("code", "expected"), sorted(REFERENCE_CODES.items()))
def test_every_reference_code(code: str, expected: Outcome | Action) -> None:
    """Each 400 code of the API reference maps to the contract's outcome or action."""
    verdict = TABLE.classify(400, code, None)
    if isinstance(expected, Outcome):
        assert verdict.action is Action.FINAL
        assert verdict.outcome is expected
    else:
        assert verdict.action is expected


def test_reference_list_is_complete() -> None:
    """The parametrised list above holds every code the shipped API reference names."""
    reference = Path(__file__).resolve().parents[1] / "docs" / "api" / "cancel-order.md"
    named = set(re.findall(r"^- ([A-Z0-9_]+):", reference.read_text(), flags=re.M))
    assert named
    assert named <= set(REFERENCE_CODES)


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (200, Outcome.CANCELLED),
        (404, Action.FATAL),  # the gateway's bare 404: the base URL misses the API
        (401, Action.REAUTH),
        (403, Action.QUOTA),
        (408, Action.RETRY),
        (425, Action.RETRY),
        (429, Action.THROTTLE),
        (500, Action.RETRY),
        (502, Action.RETRY),
        (503, Action.RETRY),
        (504, Action.RETRY),
        (599, Action.RETRY),
        (302, Action.RETRY),
        (409, Action.RETRY),
    ],
)
def test_statuses(status: int, expected: Outcome | Action) -> None:
    """Statuses map by exact code, then class, then the cautious default (retry)."""
    verdict = TABLE.classify(status, None, None)
    if isinstance(expected, Outcome):
        assert (verdict.action, verdict.outcome) == (Action.FINAL, expected)
    else:
        assert verdict.action is expected


@pytest.mark.parametrize("failure", ["timeout", "connection", "unreadable"])
def test_transport_failures_are_retryable(failure: str) -> None:
    """Timeouts, connection errors and unreadable bodies are retried."""
    assert TABLE.classify(None, None, failure).action is Action.RETRY


def test_override_table(tmp_path: Path) -> None:
    """A user's table replaces the shipped one."""
    path = tmp_path / "outcomes.toml"
    path.write_text('[status.400]\nverdict = "rejected"\n[status.400.codes]\nR0008 = "retry"\n')
    table = OutcomeTable.load(path)
    assert table.classify(400, "R0008", None).action is Action.RETRY
    assert table.classify(400, "ORDER_ALREADY_CANCELED", None).outcome is Outcome.REJECTED


@pytest.mark.parametrize(
    "text",
    ['[status.400]\nverdict = "maybe"\n', "[status.400\n", '[default]\nverdict = "pending"\n'],
)
def test_bad_table_is_a_config_error(tmp_path: Path, text: str) -> None:
    """An unknown verdict, a TOML error or a non-final outcome is refused with the file named."""
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=r"bad\.toml"):
        OutcomeTable.load(path)


@pytest.mark.parametrize(
    ("status", "code", "failure", "expected"),
    [
        (200, None, None, None),
        (400, "R0008", None, "R0008"),
        (503, None, None, "HTTP_503"),
        (None, None, "timeout", "TIMEOUT"),
        (None, None, "connection", "CONNECTION_ERROR"),
        (400, None, "unreadable", "UNREADABLE_RESPONSE"),
    ],
)
def test_error_code_recorded(
    status: int | None, code: str | None, failure: str | None, expected: str | None
) -> None:
    """The ledger's error_code is the API's code, else a descriptive stand-in."""
    assert error_code_for(status, code, failure) == expected
