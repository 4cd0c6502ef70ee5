"""The code stays lint-clean (ruff), type-clean (mypy --strict) and laid out as its data flow
(imports one way), as part of the suite."""

from __future__ import annotations

import ast
import subprocess
import sys
from graphlib import TopologicalSorter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )


def test_ruff() -> None:
    """ruff check reports nothing."""
    done = _run("ruff", "check", "--quiet", ".")
    assert done.returncode == 0, done.stdout + done.stderr


def test_ruff_format() -> None:
    """The code is formatted with ruff format."""
    done = _run("ruff", "format", "--check", "--quiet", ".")
    assert done.returncode == 0, done.stdout + done.stderr


def test_mypy_strict() -> None:
    """mypy in strict mode finds no error in the package."""
    done = _run("mypy")
    assert done.returncode == 0, done.stdout + done.stderr


def _imports() -> dict[str, set[str]]:
    """module -> the worker modules it imports (anywhere in it: a deferred import counts)."""
    graph: dict[str, set[str]] = {}
    for path in sorted((ROOT / "worker").rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [f"{node.module}.{a.name}" for a in node.names]
                found |= {node.module, *names}
            elif isinstance(node, ast.Import):
                found |= {a.name for a in node.names}
        graph[module] = {name for name in found if name.startswith("worker.")}
    modules = set(graph)
    return {m: {i for i in deps if i in modules and i != m} for m, deps in graph.items()}


CORE = ("worker.pipeline", "worker.domain", "worker.api")
# What the core may use: itself, the settings and the runtime (clock, logs, metrics)
CORE_USES = (*CORE, "worker.settings", "worker.runtime")


def test_the_layout_holds() -> None:
    """No import cycle between modules; the core (the pool, the decision, the API client)
    knows no source, sink, ledger or stream; the command line (and argparse) reached only from
    the entry point. (A module's size follows its idea: no test counts its lines.)"""
    graph = _imports()
    TopologicalSorter(graph).prepare()  # raises CycleError naming the cycle
    beyond = {
        (m, d)
        for m, deps in graph.items()
        if m.startswith(CORE)
        for d in deps
        if not d.startswith(CORE_USES)
    }
    assert beyond == set()
    outside = {m for m, deps in graph.items() if not m.startswith("worker.cli")}
    assert {m for m in outside if any(d.startswith("worker.cli") for d in graph[m])} == {
        "worker.entry"  # the command's entry point (worker.__main__ runs it)
    }
    for path in (ROOT / "worker").rglob("*.py"):
        if "cli" not in path.relative_to(ROOT).parts:
            assert "argparse" not in path.read_text(encoding="utf-8"), path
