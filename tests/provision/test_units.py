"""The role's systemd units are sandboxed, and no task can print a private key (offline checks).

`systemd-analyze security --offline=true` scores the rendered unit files the
way it scores a running unit: at most 2.5 ("OK") for each daemon. The real
units run under systemd in the provisioning test (test_site.py).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jinja2
import pytest
import yaml

ROLES = Path(__file__).resolve().parents[2] / "ansible" / "roles"
TEMPLATES = ROLES / "haproxy_py" / "templates"
UNITS = ["haproxy-py", "ha-agent", "ha-controller"]
MAX_EXPOSURE = 2.5
VARS: dict[str, Any] = {
    "ansible_managed": "Ansible managed",
    "haproxy_py_config": "/etc/haproxy-py/node.toml",
    "haproxy_py_pki_dir": "/etc/haproxy-py/pki",
    "haproxy_py_venv": "/opt/haproxy-py/venv",
    "haproxy_py_user": "haproxy-py",
    "haproxy_py_agent_user": "ha-agent",
    "haproxy_py_controller_user": "ha-controller",
    "haproxy_py_watchdog_sec": 10,
    "haproxy_py_restart_sec": 1,
    "haproxy_py_admin_bind": "127.0.0.1:9901",
    "haproxy_py_listeners": [],
    "haproxy_py_cluster_vips": ["198.18.0.100", "198.18.0.101"],
    "haproxy_py_listen_port": 80,
    "haproxy_py_bgp": False,
    "haproxy_py_bgp_live_link": "havips",
    "haproxy_py_bgp_announce_file": "/var/lib/haproxy-py/bird-announce.conf",
}
BGP: dict[str, Any] = {"haproxy_py_bgp": True}


def render(unit: str, kind: str = "service", **overrides: Any) -> str:
    """The unit as Ansible's template module writes it (trim_blocks, as Ansible sets it)."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        keep_trailing_newline=False,  # as Ansible: an include loses its last newline
    )
    env.filters["bool"] = bool
    env.filters["dirname"] = os.path.dirname
    return env.get_template(f"{unit}.{kind}.j2").render(**{**VARS, **overrides})


def _directives(text: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in text.splitlines():
        if "=" in line and not line.startswith("#"):
            key, value = line.split("=", 1)
            found.setdefault(key, []).append(value)
    return found


@pytest.mark.parametrize("bgp", [False, True], ids=["floating", "bgp"])
@pytest.mark.parametrize("unit", UNITS)
def test_exposure_is_ok(unit: str, bgp: bool, tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.fail("systemd-analyze is missing: apt-get install systemd")
    path = tmp_path / f"{unit}.service"
    path.write_text(render(unit, haproxy_py_bgp=bgp))
    done = subprocess.run(
        [analyze, "security", "--offline=true", "--no-pager", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", done.stdout)
    assert match, done.stdout + done.stderr
    exposure = float(match.group(1))
    print(f"{unit}: exposure {exposure}")
    assert exposure <= MAX_EXPOSURE, done.stdout


def test_each_daemon_has_its_own_user_and_only_its_capabilities() -> None:
    units = {unit: _directives(render(unit)) for unit in UNITS}
    users = {unit: d["User"][0] for unit, d in units.items()}
    assert len(set(users.values())) == 3, users
    assert units["ha-controller"]["CapabilityBoundingSet"] == [""]
    assert units["ha-agent"]["CapabilityBoundingSet"] == ["CAP_NET_ADMIN CAP_NET_RAW"]
    for unit, directives in units.items():  # an include must not swallow the next line
        families = directives["RestrictAddressFamilies"][0].split()
        assert all(re.fullmatch(r"AF_[A-Z0-9]+", f) for f in families), (unit, families)
    assert "AF_PACKET" in units["ha-agent"]["RestrictAddressFamilies"][0]
    proxy = units["haproxy-py"]
    assert "AF_PACKET" not in proxy["RestrictAddressFamilies"][0]
    assert "agent.key" in proxy["InaccessiblePaths"][0]
    assert proxy["CapabilityBoundingSet"] == ["CAP_NET_BIND_SERVICE"]
    assert proxy["Requires"] == ["haproxy-py.socket"]


def test_bgp_mode_gives_the_proxy_its_live_link_and_the_agent_the_announce_file() -> None:
    """The proxy opens the persistent TUN device a root step made for its user, and only that
    device; it gains no capability. The agent may write the announce file's directory,
    group-readable (BIRD reads it through its group)."""
    floating = _directives(render("haproxy-py"))
    assert "ExecStartPre" not in floating and "DeviceAllow" not in floating
    proxy = _directives(render("haproxy-py", **BGP))
    assert proxy["ExecStartPre"] == [
        "+/opt/haproxy-py/venv/bin/python -m agent.livelink --device havips --persistent haproxy-py"
    ]
    assert proxy["ExecStart"] == [
        "/opt/haproxy-py/venv/bin/python -m agent.livelink --device havips -- "
        "/opt/haproxy-py/venv/bin/haproxy-py run --config /etc/haproxy-py/node.toml"
    ]
    assert proxy["DeviceAllow"] == ["/dev/net/tun rw"] and proxy["PrivateDevices"] == ["yes"]
    assert proxy["CapabilityBoundingSet"] == ["CAP_NET_BIND_SERVICE"]
    agent = _directives(render("ha-agent", **BGP))
    assert agent["ReadWritePaths"] == ["/var/lib/haproxy-py"]
    assert agent["UMask"] == ["0027"] and "bird.service" in agent["Wants"][0]
    assert _directives(render("ha-agent"))["UMask"] == ["0077"]


def test_the_proxy_listens_on_sockets_systemd_makes_transparent() -> None:
    """IP_TRANSPARENT is set by systemd, so the proxy's closes leave after a move without
    CAP_NET_RAW: one ListenStream per listener (one per VIP by default), free-bound."""
    per_vip = _directives(render("haproxy-py", "socket"))
    assert per_vip["ListenStream"] == ["198.18.0.100:80", "198.18.0.101:80"]
    assert per_vip["Transparent"] == per_vip["FreeBind"] == ["yes"]
    assert per_vip["Service"] == ["haproxy-py.service"]
    listeners = [{"name": "web", "bind": "0.0.0.0:8080"}, {"name": "tls", "bind": "[::]:443"}]
    given = _directives(render("haproxy-py", "socket", haproxy_py_listeners=listeners))
    assert given["ListenStream"] == ["0.0.0.0:8080", "[::]:443"]


def _tasks() -> list[tuple[Path, dict[str, Any]]]:
    found = []
    for path in sorted(ROLES.glob("*/tasks/*.yml")):
        for task in yaml.safe_load(path.read_text()) or []:
            found.append((path, task))
    return found


def _writes_a_key(task: dict[str, Any]) -> bool:
    module = task.get("ansible.builtin.copy") or task.get("ansible.builtin.template")
    if not module:
        return False
    names = [str(module.get("src", "")), str(module.get("dest", ""))]
    names += [
        str(v) for item in task.get("loop") or [] if isinstance(item, dict) for v in item.values()
    ]
    return any(name.endswith(".key") for name in names)


def test_every_task_that_copies_a_key_hides_it() -> None:
    """M7: a task that writes a private key has diff: false and no_log, so `--diff` and a
    failure's message never print one (the provisioning test runs `--diff` for real)."""
    keyed = [(path.parent.parent.name, task) for path, task in _tasks() if _writes_a_key(task)]
    assert {role for role, _ in keyed} == {"etcd", "haproxy_py"}, keyed
    for role, task in keyed:
        assert task.get("diff") is False and task.get("no_log") is True, (role, task["name"])
