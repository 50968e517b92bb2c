"""The hot modules run compiled, as they ship, and a build older than its source is refused."""

from __future__ import annotations

import ast
import importlib
import os
from pathlib import Path

import pytest

from haproxy_py.proxy.compiled import EXT_SUFFIX, compiled_modules, stale_modules

SETUP = Path(__file__).resolve().parents[3] / "setup.py"


def _setup_compiles() -> list[str]:
    """The module names in setup.py's COMPILED list."""
    for node in ast.parse(SETUP.read_text()).body:
        if isinstance(node, ast.Assign) and ast.unparse(node.targets[0]) == "COMPILED":
            return sorted(Path(path).stem for path in ast.literal_eval(node.value))
    raise AssertionError("setup.py has no COMPILED list")


@pytest.mark.skipif(bool(os.environ.get("HAPROXY_PY_PURE")), reason="a pure-Python build")
def test_the_modules_setup_compiles_are_the_ones_that_run() -> None:
    names = _setup_compiles()
    assert compiled_modules() == names
    for name in names:
        module = importlib.import_module(f"haproxy_py.proxy.{name}")
        assert str(module.__file__).endswith(EXT_SUFFIX)


def test_a_module_built_before_its_source_changed_is_stale(tmp_path: Path) -> None:
    for name, built, edited in (("fresh", 200, 100), ("stale", 100, 200)):
        source, extension = tmp_path / f"{name}.py", tmp_path / f"{name}{EXT_SUFFIX}"
        source.touch()
        extension.touch()
        os.utime(source, (edited, edited))
        os.utime(extension, (built, built))
    (tmp_path / "plain.py").touch()
    assert compiled_modules(tmp_path) == ["fresh", "stale"]
    assert stale_modules(tmp_path) == ["stale"]
