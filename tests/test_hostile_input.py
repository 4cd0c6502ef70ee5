"""A corpus of hostile input files, through the real CLI: each one gets either `invalid` rows or
a one-line error naming the file and the line, with exit status 2; no ID ever changes the path
of the request it is sent in."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from tests.support import Cli, ledger_rows, sim_env
from worker.simulator import RunningSimulator

GOOD = "CDE0000000001"
HOSTILE_IDS = [
    "CDE/0000000001",
    "../CDE0000000001",
    "..",
    ".",
    "CDE%2F000000001",
    "CDE0000000001?x=1",
    "CDE0000000001#frag",
    "CDE 0000000001",
    "CDE000000000\uff11",  # a fullwidth one
    "\u0421DE0000000001",  # a Cyrillic Es for the C
    "CDE0000000001\u200b",
    "%00",
    "CDE\\0000000001",
]

# name -> (bytes, expected): expected is ("error", line number) or ("invalid", count of rows)
CORPUS: dict[str, tuple[bytes, tuple[str, int]]] = {
    "binary": (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe", ("error", 1)),
    "bad_utf8_line_3": (f"orderId\n{GOOD}\nCDE\xff\xfe0000001\n".encode("latin-1"), ("error", 3)),
    "ten_mb_line": (f"orderId\n{GOOD}\n".encode() + b"A" * 10_000_000 + b"\n", ("error", 3)),
    "utf16": ("orderId\nCDE0000000001\n".encode("utf-16"), ("error", 1)),
    "empty": (b"", ("invalid", 0)),
    "header_only": (b"orderId\n", ("invalid", 0)),
    "blank_lines": (b"\n\n  \n\r\n", ("invalid", 0)),
    "hostile_ids": (
        ("orderId\n" + "\n".join(HOSTILE_IDS) + "\n").encode(),
        ("invalid", len(HOSTILE_IDS)),
    ),
    "quote_never_closed": (b'orderId\n"CDE0000000001\nCDE0000000002\n', ("invalid", 1)),
}


@pytest.mark.parametrize("name", sorted(CORPUS))
async def test_corpus(cli: Cli, tmp_path: Path, name: str) -> None:
    """A clear one-line error with file and line (exit 2), or invalid rows (exit 1 or 0)."""
    data, (kind, expected) = CORPUS[name]
    path = tmp_path / f"{name}.csv"
    path.write_bytes(data)
    ledger = tmp_path / "l.sqlite"
    done = await cli.run(
        "run", str(path), "--dry-run", "--ledger", str(ledger), "--log-format", "json"
    )
    if kind == "error":
        assert done.code == 2, done.stderr
        errors = [line for line in done.stderr.splitlines() if "error" in line]
        assert len(errors) == 1, done.stderr
        assert re.search(rf"{re.escape(str(path))}:{expected}: ", errors[0]), errors[0]
        return
    *events, last = done.stderr.strip().splitlines()
    assert last.startswith("cancel-orders: ")  # every run ends with its one reason line
    summary = json.loads(events[-1])
    assert summary["event"] == "run_summary"
    assert summary["outcomes"]["invalid"] == expected
    assert done.code == (1 if expected else 0)


async def test_wrong_column(cli: Cli, tmp_path: Path) -> None:
    """--column naming no column is an error naming the file, line 1 and the columns found."""
    path = tmp_path / "o.csv"
    path.write_text("id,comment\nCDE0000000001,x\n")
    done = await cli.run("run", str(path), "--dry-run", "--column", "orderRef")
    assert done.code == 2
    assert f"{path}:1:" in done.stderr
    assert "orderRef" in done.stderr


async def test_fifty_thousand_duplicates_sent_once(
    cli: Cli, sim: RunningSimulator, tmp_path: Path
) -> None:
    """50,000 copies of one ID: one request, one row."""
    path = tmp_path / "dups.csv"
    path.write_text("orderId\n" + f"{GOOD}\n" * 50_000)
    ledger = tmp_path / "l.sqlite"
    done = await cli.run("run", str(path), "--yes", env=sim_env(sim, ledger))
    assert done.code == 0, done.stderr
    assert sim.sim.stats.deletes == {GOOD: 1}
    assert list(ledger_rows(ledger)) == [GOOD]
    assert "49999" in done.stdout


async def test_hostile_ids_never_change_the_path(cli: Cli, make_sim: Any, tmp_path: Path) -> None:
    """Sent anyway (an ID pattern that accepts anything), each hostile ID arrives at the server
    as the one path segment it is, and nothing else is requested."""
    running = await make_sim()
    ids = [i for i in HOSTILE_IDS if i.strip() == i and i not in (".", "..")] + [".", ".."]
    path = tmp_path / "o.csv"
    path.write_text("orderId\n" + "\n".join(ids) + "\n")
    ledger = tmp_path / "l.sqlite"
    env = sim_env(running, ledger, MOUVONE_ID_PATTERN=".+")
    done = await cli.run("run", str(path), "--yes", env=env)
    assert done.code == 0, done.stderr
    assert set(running.sim.stats.deletes) == set(ids)
    assert all(n == 1 for n in running.sim.stats.deletes.values())
    assert set(ledger_rows(ledger)) == set(ids)


async def test_ids_no_ledger_can_keep_are_invalid_whatever_the_pattern(
    cli: Cli, make_sim: Any, tmp_path: Path, ledger_location: str
) -> None:
    """Under a pattern that accepts anything, an ID with U+0000 in it and one of 600
    characters are `invalid` (`WRONG_FORMAT`, saying why), never sent; the others cancelled,
    and the same command again sends nothing. No ledger keeps the first as it is (PostgreSQL's
    text cannot hold it; its claim took the U+FFFD ID, then waited for ever for the order its
    own run held), and PostgreSQL's index cannot take the second (its claim failed the whole
    batch: exit 3, nothing sent)."""
    running = await make_sim()
    long_id = "L" * 600
    path = tmp_path / "o.csv"
    path.write_bytes(
        b"orderId\nNUL\x000000000001\n" + long_id.encode() + b"\nCDE0000000001\nCDE0000000002\n"
    )
    env = sim_env(running, ledger_location, MOUVONE_ID_PATTERN=".+")
    done = await cli.run("run", str(path), "--yes", env=env, timeout=30)
    assert done.code == 1, done.stderr[-2000:]
    assert set(running.sim.stats.deletes) == {"CDE0000000001", "CDE0000000002"}
    rows = ledger_rows(ledger_location)
    nul = rows["NUL\ufffd0000000001"]
    assert (nul["outcome"], nul["error_code"]) == ("invalid", "WRONG_FORMAT")
    assert "holds U+0000" in nul["message"]
    (long_row,) = [r for order_id, r in rows.items() if order_id.startswith("LLL")]
    assert (long_row["outcome"], long_row["error_code"]) == ("invalid", "WRONG_FORMAT")
    assert "600 characters long" in long_row["message"]
    again = await cli.run("run", str(path), "--yes", env=env, timeout=30)  # the same command
    assert again.code == 1, again.stderr[-2000:]
    assert sum(running.sim.stats.deletes.values()) == 2
