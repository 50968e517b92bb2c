"""hactl starts fast: `--help` and `version` load no etcd client, PKI, lab or logging setup.

Wall time is not asserted (the machine is shared); the imports are what cost
it: importing the CLI took 168 ms with every command loaded (aetcd and gRPC,
cryptography, the lab, structlog) and 28 ms now (`python -X importtime`), and
`hactl --help` went from 0.19 s to 0.04-0.05 s wall time on an idle machine.
"""

from __future__ import annotations

import importlib
import json
import subprocess
import sys

import pytest

from haproxy_py.hactl.cli import COMMANDS

HEAVY = ("aetcd", "grpc", "cryptography", "aiohttp", "structlog", "haproxy_py.lab")


def loaded_after(code: str) -> set[str]:
    probe = f"import sys, json\n{code}\nprint(json.dumps(sorted(sys.modules)))"
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    return set(json.loads(done.stdout.splitlines()[-1]))


def heavy(modules: set[str]) -> list[str]:
    return sorted(m for m in modules if m.split(".")[0] in HEAVY or m.startswith(HEAVY))


@pytest.mark.parametrize("argv", [["--help"], ["version"], ["-h"]])
def test_help_and_version_load_nothing_heavy(argv: list[str]) -> None:
    code = (
        "import sys\nfrom haproxy_py.hactl.cli import main\n"
        f"sys.argv = ['hactl', *{argv!r}]\n"
        "try:\n    main()\nexcept SystemExit:\n    pass"
    )
    assert heavy(loaded_after(code)) == []


def test_status_loads_the_etcd_client_but_not_pki_lab_or_http() -> None:
    modules = loaded_after("import haproxy_py.hactl.status")
    assert "aetcd" in modules  # it does need etcd
    assert [m for m in heavy(modules) if m.split(".")[0] in ("cryptography", "aiohttp")] == []
    assert not any(m.startswith("haproxy_py.lab") for m in modules)


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_listed_short_help_is_the_commands_own(name: str) -> None:
    module, attribute, short = COMMANDS[name]
    command = getattr(importlib.import_module(module), attribute)
    assert command.name == name
    assert command.get_short_help_str(1000) == short
