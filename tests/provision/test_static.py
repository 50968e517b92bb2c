"""The Ansible tree and the Vagrantfile, checked without any host: lint, syntax, paths.

These need no root and no network: ansible-lint runs offline, `vagrant
validate` ignores the providers (none is installed here) and runs on a copy
so that no `.vagrant/` appears in the work tree.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
ANSIBLE = REPO / "ansible"
VAGRANTFILE = REPO / "Vagrantfile"
VENV_BIN = Path(sys.executable).parent
ROLES = sorted(p.name for p in (ANSIBLE / "roles").iterdir() if p.is_dir())


def _run(argv: list[str], tmp_path: Path, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "PATH": f"{VENV_BIN}:{os.environ.get('PATH', '/usr/bin:/bin')}",
        "ANSIBLE_HOME": str(tmp_path / "ansible-home"),
        "ANSIBLE_LOCAL_TEMP": str(tmp_path / "ansible-tmp"),
        "HOME": str(tmp_path),
        "VAGRANT_HOME": str(tmp_path / "vagrant-home"),
        "NO_COLOR": "1",
    }
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def _tool(name: str) -> str:
    found = shutil.which(name, path=f"{VENV_BIN}:{os.environ.get('PATH', '')}")
    if found is None:
        pytest.fail(f"{name} is not installed: run `make deps` (it installs it)")
    return found


def test_ansible_lint_is_clean_offline(tmp_path: Path) -> None:
    done = _run([_tool("ansible-lint"), "--offline", "--nocolor"], tmp_path, cwd=ANSIBLE)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("inventory", ["vagrant.ini", "example.ini"])
def test_playbook_syntax_and_inventory_groups(inventory: str, tmp_path: Path) -> None:
    path = ANSIBLE / "inventory" / inventory
    syntax = _run(
        [_tool("ansible-playbook"), "--syntax-check", "-i", str(path), str(ANSIBLE / "site.yml")],
        tmp_path,
    )
    assert syntax.returncode == 0, syntax.stdout + syntax.stderr
    listed = _run([_tool("ansible-inventory"), "-i", str(path), "--list"], tmp_path)
    assert listed.returncode == 0, listed.stderr
    groups = json.loads(listed.stdout)
    assert len(groups["etcd"]["hosts"]) == 3
    assert len(groups["proxies"]["hosts"]) == 3


@pytest.mark.parametrize("role", ROLES)
def test_every_role_default_is_prefixed_and_commented(role: str) -> None:
    defaults = ANSIBLE / "roles" / role / "defaults" / "main.yml"
    data = yaml.safe_load(defaults.read_text()) or {}
    assert all(key.startswith(f"{role}_") for key in data), sorted(data)
    # Every key has a comment above it, or shares the comment of the block it is in.
    previous = ""
    for line in defaults.read_text().splitlines():
        key = re.match(r"^([a-z0-9_]+):", line)
        if key:
            assert previous.startswith("#") or re.match(r"^[a-z0-9_]+:", previous), (
                f"{defaults}: {key.group(1)} has no comment"
            )
        previous = line


@pytest.mark.parametrize(
    "role_file", ["tasks/main.yml", "meta/main.yml", "defaults/main.yml"], ids=str
)
def test_every_role_has_the_usual_layout(role_file: str) -> None:
    for role in ROLES:
        assert (ANSIBLE / "roles" / role / role_file).is_file(), f"{role}/{role_file}"


def test_vagrantfile_syntax() -> None:
    done = subprocess.run(
        [_tool("ruby"), "-c", str(VAGRANTFILE)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0 and "Syntax OK" in done.stdout, done.stdout + done.stderr


def test_vagrant_validate_ignoring_providers(tmp_path: Path) -> None:
    copy = tmp_path / "lab"
    copy.mkdir()
    shutil.copy(VAGRANTFILE, copy / "Vagrantfile")
    done = _run([_tool("vagrant"), "validate", "--ignore-provider"], tmp_path, cwd=copy)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "validated successfully" in done.stdout


def test_every_path_the_vagrantfile_names_exists() -> None:
    text = VAGRANTFILE.read_text()
    named = re.findall(r'=\s*"((?:ansible|dist)/[^"]*)"', text)
    assert "ansible/site.yml" in named and "ansible/inventory/vagrant.ini" in named, named
    for path in named:
        if "*" not in path:
            assert (REPO / path).exists(), f"the Vagrantfile names {path}, which does not exist"
