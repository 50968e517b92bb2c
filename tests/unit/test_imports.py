"""The product's import graph: no cycle, pure modules pure, no daemon leaning on the lab.

Walked from the source (AST), `TYPE_CHECKING` imports included for cycles: a
type-level cycle is the same coupling as a runtime one. Callbacks between parts
go through Protocols declared by the callee (`upstream.ResponseSink`,
`clientstate.ProxyContext`, `listeners.HeldConnection`, `stats.StatsSource`,
`admin.AdminSource`) or plain callables (`ControllerMetrics.bind`), so no part
imports the whole it belongs to.

A module is pure when its docstring's first line says "(pure": it may not
import, directly or through the product modules it imports at run time, a
module that does I/O or reads the clock (asyncio, time, aetcd, pyroute2).
"""

from __future__ import annotations

import ast
import functools
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("haproxy_py", "agent", "controller")
IMPURE = {"asyncio", "time", "aetcd", "pyroute2"}
# Pure by contract though not labelled in the first line (their docstrings state the rules).
PURE_TOO = {"controller.decide", "agent.state", "agent.arming", "agent.actions", "agent.failsafe"}


def module_files() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


MODULES = module_files()


@functools.cache
def tree_of(name: str) -> ast.Module:
    return ast.parse(MODULES[name].read_text())


def _type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST, runtime_only: bool) -> Iterator[ast.Import | ast.ImportFrom]:
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and _type_checking(node):
            if not runtime_only:
                yield from (n for n in ast.walk(node) if isinstance(n, ast.Import | ast.ImportFrom))
            continue
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        else:
            yield from _imports(node, runtime_only)


@functools.cache
def imports_of(name: str, runtime_only: bool = False) -> frozenset[str]:
    """Every module `name` imports (product modules by full name, others as written)."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in _imports(tree_of(name), runtime_only):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
            continue
        module = node.module or ""
        if node.level:
            base = package.split(".")[: len(package.split(".")) - node.level + 1]
            module = ".".join([*base, module] if module else base)
        found.add(module)
        found.update(f"{module}.{a.name}" for a in node.names if f"{module}.{a.name}" in MODULES)
    return frozenset(found)


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of `graph` as a path that ends where it starts, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                return [*path[path.index(dep) :], dep]
            if dep not in state and (cycle := visit(dep, [*path, dep])):
                return cycle
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start, [start])):
            return cycle
    return None


@functools.cache
def _graph(runtime_only: bool) -> dict[str, frozenset[str]]:
    return {
        name: frozenset(d for d in imports_of(name, runtime_only) if d in MODULES and d != name)
        for name in MODULES
    }


def product_graph(runtime_only: bool = False) -> dict[str, set[str]]:
    """Product module -> the product modules it imports (a fresh copy to edit)."""
    return {name: set(deps) for name, deps in _graph(runtime_only).items()}


def pure_modules() -> list[str]:
    labelled = []
    for name in MODULES:
        doc = ast.get_docstring(tree_of(name)) or ""
        if "(pure" in doc.partition("\n")[0]:
            labelled.append(name)
    return sorted({*labelled, *PURE_TOO})


def test_find_cycle_names_the_loop() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_the_walk_sees_type_checking_imports_and_relative_ones() -> None:
    tree = ast.parse("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import x\n")
    assert {n.names[0].name for n in _imports(tree, runtime_only=False)} == {"TYPE_CHECKING", "x"}
    assert {n.names[0].name for n in _imports(tree, runtime_only=True)} == {"TYPE_CHECKING"}
    assert "haproxy_py.proxy.master" in product_graph()["haproxy_py.proxy.cli"]


def test_the_product_imports_form_no_cycle() -> None:
    graph = product_graph()
    assert len(graph) > 100 and graph["haproxy_py.proxy.server"]  # the walk found the code
    cycle = find_cycle(graph)
    assert cycle is None, " -> ".join(cycle or [])


def _closure(name: str, graph: dict[str, set[str]]) -> dict[str, str]:
    """Every product module `name` reaches at run time -> the module that imports it."""
    reached: dict[str, str] = {}
    stack = [name]
    while stack:
        current = stack.pop()
        for dep in graph[current]:
            if dep not in reached and dep != name:
                reached[dep] = current
                stack.append(dep)
    return reached


@pytest.mark.parametrize("name", pure_modules())
def test_a_pure_module_imports_no_io_and_no_clock(name: str) -> None:
    graph = product_graph(runtime_only=True)
    reached = _closure(name, graph)
    for module in [name, *reached]:
        bad = {d.split(".")[0] for d in imports_of(module, runtime_only=True)} & IMPURE
        via = f" (through {module})" if module != name else ""
        assert not bad, f"{name} is labelled pure but imports {sorted(bad)}{via}"


def test_enough_modules_are_labelled_pure_for_the_check_to_mean_something() -> None:
    pure = pure_modules()
    assert {"controller.decide", "haproxy_py.proxy.balancer", "haproxy_py.cluster.timing"} <= set(
        pure
    )


def test_no_daemon_or_library_module_imports_the_lab() -> None:
    """The lab (demo + instruments) leans on the product, never the other way round; hactl
    only registers the `lab` command group."""
    allowed = {"haproxy_py.hactl.cli"}
    offenders = [
        name
        for name in MODULES
        if not name.startswith("haproxy_py.lab")
        and name not in allowed
        and any(d.startswith("haproxy_py.lab") for d in imports_of(name))
    ]
    assert offenders == []
