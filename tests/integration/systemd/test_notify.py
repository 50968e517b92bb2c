"""The real daemons tell a stand-in systemd READY=1 only once they are ready, and feed the
watchdog meanwhile: the proxy once it listens, the controller once it has reached etcd.

(The agent needs netlink and a namespace; the provisioning test proves it under real
systemd, where a `Type=notify` unit turns active only on READY=1.)
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.etcd import EtcdMember, free_ports

REPO = Path(__file__).resolve().parents[3]
WAIT = 30.0  # generous: the machine is shared


class StandInSystemd:
    """$NOTIFY_SOCKET for one daemon: a bound datagram socket that records what arrives."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.messages: list[str] = []

    def env(self) -> dict[str, str]:
        return {**os.environ, "NOTIFY_SOCKET": str(self.path), "WATCHDOG_USEC": "1000000"}

    def wait_for(self, message: str, timeout: float = WAIT) -> bool:
        deadline = time.monotonic() + timeout
        while message not in self.messages and time.monotonic() < deadline:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                self.messages.append(self.sock.recv(4096).decode())
            except TimeoutError:
                break
        return message in self.messages


@pytest.fixture
def systemd(tmp_path: Path) -> Iterator[StandInSystemd]:
    stand_in = StandInSystemd(tmp_path / "notify")
    yield stand_in
    stand_in.sock.close()


def start(argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO)


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.kill()
    proc.wait()


def test_controller_is_ready_once_it_reaches_etcd(systemd: StandInSystemd, tmp_path: Path) -> None:
    client, peer = free_ports(2)
    config = tmp_path / "c.toml"
    config.write_text(
        f'[cluster]\nname = "sd"\nvips = ["198.18.0.100"]\n'
        f'[etcd]\nendpoints = ["127.0.0.1:{client}"]\ntimeout = 0.5\n'
        '[controller]\nmetrics = ""\n'
    )
    argv = [sys.executable, "-m", "controller", "--config", str(config)]
    proc = start(argv, systemd.env(), tmp_path / "c.log")
    member = EtcdMember("m0", client, peer, tmp_path / "m0", f"m0=http://127.0.0.1:{peer}")
    try:
        # No etcd yet: the watchdog is fed, READY=1 is not sent.
        assert systemd.wait_for("WATCHDOG=1")
        assert not systemd.wait_for("READY=1", timeout=2.0)
        member.spawn()
        member.wait_healthy()
        assert systemd.wait_for("READY=1")
        assert systemd.messages.count("READY=1") == 1
    finally:
        stop(proc)
        member.kill()


def test_proxy_is_ready_once_it_listens(systemd: StandInSystemd, tmp_path: Path) -> None:
    (port,) = free_ports(1)
    config = tmp_path / "p.toml"
    config.write_text(
        f'listeners = [{{ name = "web", bind = "127.0.0.1:{port}" }}]\n'
        'routes = [{ backend = "app" }]\n'
        'backends = { app = { servers = ["127.0.0.1:1"] } }\n'
        '[node]\nname = "sd-node"\n[admin]\nbind = "127.0.0.1:0"\n'
    )
    argv = [sys.executable, "-m", "haproxy_py.proxy", "run", "--config", str(config)]
    proc = start(argv, systemd.env(), tmp_path / "p.log")
    try:
        assert systemd.wait_for("READY=1"), (tmp_path / "p.log").read_text()
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass  # accepted at once: READY=1 came after the bind
        assert systemd.wait_for("WATCHDOG=1")
    finally:
        stop(proc)
