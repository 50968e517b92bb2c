"""Which data-plane modules run compiled, and the guard against a stale build.

`setup.py` compiles the hot modules with mypyc; in a source checkout (an
editable install) each one's extension module lies beside its `.py`, and
Python loads the extension first. One built before its source last changed
would run the old code without a word, so importing `haproxy_py.proxy` from a
checkout fails instead, naming the modules and the fix. An installed wheel is
not checked: it is built from its sources in one go, and its files all carry
the time they were unpacked, in whatever order.
"""

from __future__ import annotations

import sysconfig
from pathlib import Path

HERE = Path(__file__).parent
EXT_SUFFIX: str = sysconfig.get_config_var("EXT_SUFFIX")
CHECKOUT = (HERE.parent.parent / "setup.py").is_file()


def compiled_modules(package: Path = HERE) -> list[str]:
    """The modules of `package` that have an extension module beside them."""
    return sorted(path.name.removesuffix(EXT_SUFFIX) for path in package.glob("*" + EXT_SUFFIX))


def stale_modules(package: Path = HERE) -> list[str]:
    """The compiled modules of `package` whose source changed after they were built."""
    return [
        name
        for name in compiled_modules(package)
        if (package / f"{name}.py").stat().st_mtime
        > (package / f"{name}{EXT_SUFFIX}").stat().st_mtime
    ]


def check_fresh() -> None:
    """In a checkout, refuse to run a compiled module older than its source."""
    stale = stale_modules() if CHECKOUT else []
    if stale:
        raise ImportError(
            f"haproxy_py.proxy: {', '.join(stale)} compiled before the source last changed; "
            "rebuild them: `make venv` (or `pip install -e .`), or remove "
            f"haproxy_py/proxy/*{EXT_SUFFIX} to run the pure Python modules"
        )
