"""The README is a front page, and every table the docs state that the code defines is the
code's: settings, outcomes, exit statuses; every relative link leads to a file."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from worker.domain.models import Outcome
from worker.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "deploy" / "RUNBOOK.md"]


def test_the_readme_is_a_front_page() -> None:
    """About 12,000 characters at most, starting with the two commands."""
    text = (ROOT / "README.md").read_text()
    assert len(text) <= 12_500
    assert "cancel-orders demo" in text.split("## ", 1)[0]


def test_the_settings_table_is_the_model() -> None:
    """docs/settings.md and docs/queue-mode.md name every setting of the model as its
    variable, and no other."""
    text = (ROOT / "docs" / "settings.md").read_text() + (
        ROOT / "docs" / "queue-mode.md"
    ).read_text()
    named = set(re.findall(r"^\| [^|]*\| `(MOUVONE_[A-Z_]+)`", text, flags=re.M))
    named |= set(re.findall(r"`(MOUVONE_[A-Z_]+)`, `(MOUVONE_[A-Z_]+)`", text)[0])
    model = {f"MOUVONE_{name.upper()}" for name in Settings.model_fields if name != "targets"}
    assert model - named == set()
    assert named - model == set()


def test_the_outcomes_table_is_the_vocabulary() -> None:
    """The README's outcome table lists exactly the outcomes of the ledger."""
    text = (ROOT / "README.md").read_text()
    table = text.split("| outcome | when | final |", 1)[1].split("\n\n", 1)[0]
    assert set(re.findall(r"^\| `([a-z_]+)` \|", table, flags=re.M)) == {o.value for o in Outcome}


def test_the_exit_statuses() -> None:
    """The README's exit status table names every status the tool ends with."""
    text = (ROOT / "README.md").read_text()
    table = text.split("| code | meaning |", 1)[1].split("\n\n", 1)[0]
    codes = set(re.findall(r"^\| ([0-9 /]+) \|", table, flags=re.M))
    assert {c.strip() for c in codes} >= {"0", "1", "2", "3", "130 / 143"}


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_links_lead_somewhere(page: Path) -> None:
    """Every relative link of the page names a file or folder of the repository."""
    for target in re.findall(r"\]\((?!https?://|#)([^)#]+)", page.read_text()):
        assert (page.parent / target).exists(), f"{page.name}: {target}"
