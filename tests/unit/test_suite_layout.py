"""Conventions of the test suite itself, checked so that they stay true.

No test module imports another (shared pieces live in `tests/support/` or a
tier's own helper module), and every wait goes through `tests.support.wait`.
Tests sit in their tier: `unit` (no root, no network namespace, no etcd),
`integration` (real processes, sockets, etcd), `lab` (root and namespaces:
every module marked `lab`), `provision`, `conformance`. What mypy does not
check (tests outside `tests/support`, `bench`) carries no `type: ignore`.
"""

from __future__ import annotations

import ast
import configparser
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


TIERS = {"unit", "integration", "lab", "provision", "conformance", "support"}
OUTPUT = {"artifacts"}  # what lab tests write (git-ignored), not a tier
# unit modules that run a small program of their own; a new one belongs in integration
UNIT_PROGRAMS = {
    "tests/unit/bench/test_procfs.py",  # a child python to read /proc from
    "tests/unit/cluster/test_bgp_config.py",  # bird -p
    "tests/unit/cluster/test_birdconf.py",  # bird -p
    "tests/unit/hactl/test_startup.py",  # hactl's import time
    "tests/unit/lab/test_chaos_core.py",  # subprocess's result and timeout types only
    "tests/unit/test_monitoring.py",  # promtool
}


def test_tests_sit_in_their_tier() -> None:
    tiers = {p.name for p in TESTS.iterdir() if p.is_dir() and not p.name.startswith("__")}
    assert tiers - OUTPUT <= TIERS


def _marked_lab(path: Path) -> bool:
    """The module sets `pytestmark` to `pytest.mark.lab` (alone or in a list)."""
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign) and any(
            isinstance(target, ast.Name) and target.id == "pytestmark" for target in node.targets
        ):
            return any(isinstance(n, ast.Attribute) and n.attr == "lab" for n in ast.walk(node))
    return False


def test_every_lab_module_is_marked_lab_and_nothing_else_is() -> None:
    """A lab module left unmarked never runs in `make unit`-style selections of the lab, and
    a pure test in the lab tier never runs without root: both are in the wrong place."""
    unmarked = [
        str(path.relative_to(TESTS.parent))
        for path in sorted((TESTS / "lab").rglob("test_*.py"))
        if not _marked_lab(path)
    ]
    assert unmarked == []
    marked = [
        str(path.relative_to(TESTS.parent))
        for tier in ("unit", "integration")
        for path in sorted((TESTS / tier).rglob("test_*.py"))
        if any(
            isinstance(n, ast.Attribute)
            and n.attr == "lab"
            and isinstance(n.value, ast.Attribute)
            and n.value.attr == "mark"
            for n in ast.walk(ast.parse(path.read_text()))
        )
    ]
    assert marked == []


def test_unit_tests_run_no_new_programs() -> None:
    running = {
        str(path.relative_to(TESTS.parent))
        for path in sorted((TESTS / "unit").rglob("*.py"))
        if "subprocess" in _imports(path)
    }
    assert running <= UNIT_PROGRAMS, "a unit test that runs a program belongs in integration"


def test_no_unchecked_type_ignores() -> None:
    cfg = configparser.ConfigParser()
    cfg.read(TESTS.parent / "setup.cfg")
    checked = [p.strip() for p in cfg["mypy"]["files"].split(",")]
    assert "tests/support" in checked
    offenders = [
        f"{path.relative_to(TESTS.parent)}:{number}"
        for root in (TESTS, TESTS.parent / "bench")
        for path in sorted(root.rglob("*.py"))
        if not any(str(path.relative_to(TESTS.parent)).startswith(c) for c in checked)
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if "type: ignore" in line and "type: ignore" not in line.split("#")[0]
    ]
    assert offenders == []
