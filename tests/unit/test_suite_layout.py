"""Conventions of the test suite itself, checked so that they stay true.

No test module imports another (shared pieces live in `tests/support/` or a
tier's own helper module), and every wait goes through `tests.support.wait`.
"""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]


def _imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.append(("." * node.level) + node.module)
        elif isinstance(node, ast.Import):
            found.extend(alias.name for alias in node.names)
    return found


def test_no_test_module_imports_another() -> None:
    offenders = [
        f"{path.relative_to(TESTS.parent)} imports {name}"
        for path in sorted(TESTS.rglob("*.py"))
        for name in _imports(path)
        if name.rsplit(".", 1)[-1].startswith("test_")
    ]
    assert offenders == []


def test_polling_helpers_are_not_written_again() -> None:
    """One `eventually` for the suite: a new `def until(` or `wait_until(` is a second one."""
    names = {"until", "poll_until", "wait_until", "_until", "until_scraped"}
    offenders = [
        f"{path.relative_to(TESTS.parent)}:{node.lineno} defines {node.name}"
        for path in sorted(TESTS.rglob("*.py"))
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name in names
    ]
    assert offenders == []
