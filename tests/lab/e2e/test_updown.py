"""`hactl lab up/status/down` as an operator runs them: it works, refuses a second lab, tells
what is missing, and leaves nothing behind."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from haproxy_py.lab import control, netns

pytestmark = pytest.mark.lab  # root (also to become an ordinary user), namespaces

HACTL = str(Path(sys.executable).parent / "hactl")


def hactl(
    run_dir: Path, *args: str, env: dict[str, str] | None = None, user: bool = False
) -> subprocess.CompletedProcess[str]:
    environ = {**os.environ, "HAPROXY_PY_LAB_DIR": str(run_dir), **(env or {})}
    argv = [HACTL, "lab", *args]
    if user:
        argv = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *argv]
    return subprocess.run(argv, env=environ, capture_output=True, text=True, timeout=240)


def test_not_root_is_one_clear_line(tmp_path: Path) -> None:
    done = hactl(tmp_path / "lab", "up", user=True)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        "hactl: the lab needs root (network namespaces): run it with sudo"
    ]


def test_missing_etcd_is_one_clear_line(tmp_path: Path) -> None:
    done = hactl(tmp_path / "lab", "up", env={"PATH": f"{Path(HACTL).parent}:/usr/sbin"})
    assert done.returncode == 1
    assert "etcd" in done.stderr and "apt-get install etcd-server" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "lab").exists()


def test_up_status_down_leaves_nothing_behind(tmp_path: Path) -> None:
    run_dir = tmp_path / "lab"
    prefix = "hl" + secrets.token_hex(2) + "-"
    try:
        up = hactl(run_dir, "up", "--prefix", prefix)
        assert up.returncode == 0, up.stdout + up.stderr
        assert "Chat page from this machine: http://127.0.0.1:" in up.stdout

        status = json.loads(hactl(run_dir, "status", "-o", "json").stdout)
        assert {"nodes", "client_netns", "vips", "port", "etcd", "host_url"} <= set(status)
        assert [n["name"] for n in status["nodes"]] == ["node1", "node2"]
        assert all(n["netns"].startswith(prefix) for n in status["nodes"])
        assert len(status["etcd"]) == 3 and status["client_netns"] == prefix + "client"
        with urllib.request.urlopen(status["host_url"] + "whoami", timeout=10) as response:
            assert response.headers["Via"].split()[-1] in ("node1", "node2")
            assert json.loads(response.read())["backend"] in ("app1", "app2")

        again = hactl(run_dir, "up", "--prefix", prefix)
        assert again.returncode == 1 and "already up" in again.stderr

        state = json.loads((run_dir / "netns.json").read_text())
        pids = [p["pid"] for p in state["procs"]]
        # etcd, apps, node daemons and socket holders, forwarder
        assert len(pids) == 3 + 2 + 2 * len(control.NODE_PROCESSES) + 1
    finally:
        down = hactl(run_dir, "down")
    assert down.returncode == 0 and "lab removed" in down.stdout
    assert netns.leftovers(prefix) == []
    assert not run_dir.exists()
    assert [p for p in pids if netns.pid_running(p)] == []
    assert "nothing to remove" in hactl(run_dir, "down").stdout
