"""Namespace plumbing: hosts reach each other, partitions cut only peers, teardown is complete."""

from __future__ import annotations

import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from haproxy_py.lab import netns
from haproxy_py.lab.netns import Plumbing
from haproxy_py.lab.watch import TwoOwnersWatcher
from tests.support.wait import eventually

pytestmark = pytest.mark.lab

SERVER = (
    "import socket,sys\n"
    "s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
    "s.bind(('0.0.0.0', int(sys.argv[1]))); s.listen(16)\n"
    "while True:\n"
    "    c,_=s.accept(); c.sendall(b'hi'); c.close()\n"
)
CONNECT = (
    "import socket,sys\n"
    "c=socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=1)\n"
    "assert c.recv(2)==b'hi'\n"
)


def reaches(ns: str, address: str, port: int = 7000) -> bool:
    argv = ["ip", "netns", "exec", ns, sys.executable, "-c", CONNECT, address, str(port)]
    return subprocess.run(argv, capture_output=True, timeout=20).returncode == 0


@pytest.fixture
def plumbing(tmp_path: Path) -> Iterator[Plumbing]:
    prefix = "hl" + secrets.token_hex(2) + "-"
    state = tmp_path / "netns.json"
    p = Plumbing(prefix, state)
    try:
        yield p
    finally:
        p.teardown()
        assert netns.leftovers(prefix) == []


def test_hosts_talk_partition_cuts_peers_but_not_clients(
    plumbing: Plumbing, tmp_path: Path
) -> None:
    """Partition cuts a node from its peers only; heal restores it."""
    net = netns.free_subnet(secrets.randbelow(400))
    addr = [f"{net[i]}/{net.prefixlen}" for i in (11, 12, 13)]
    plumbing.bridge()
    node = plumbing.add_host("n1", addr[0])
    peer = plumbing.add_host("n2", addr[1])
    client = plumbing.add_host("c", addr[2])
    plumbing.spawn(
        node.netns, [sys.executable, "-c", SERVER, "7000"], label="srv", log=tmp_path / "srv.log"
    )
    node_ip = str(node.address.ip)
    eventually(lambda: reaches(peer.netns, node_ip), 15)
    assert reaches(client.netns, node_ip)

    plumbing.partition(node.netns, [str(peer.address)])
    assert not reaches(peer.netns, node_ip)
    assert reaches(client.netns, node_ip)

    plumbing.heal(node.netns)
    eventually(lambda: reaches(peer.netns, node_ip), 15)


def test_teardown_from_the_state_file_alone_removes_everything(tmp_path: Path) -> None:
    """After a crash only the state file is left; it is enough to clean up, twice in a row."""
    prefix = "hl" + secrets.token_hex(2) + "-"
    state = tmp_path / "netns.json"
    net = netns.free_subnet(secrets.randbelow(400))
    builder = Plumbing(prefix, state)
    try:
        builder.bridge(f"{net[1]}/{net.prefixlen}")
        host = builder.add_host("a", f"{net[11]}/{net.prefixlen}")
        recorded = builder.spawn(host.netns, ["sleep", "600"], label="rec", log=tmp_path / "a.log")
        # A process that escaped its session: only the namespace still knows about it.
        escaped = subprocess.run(
            [
                "ip",
                "netns",
                "exec",
                host.netns,
                "sh",
                "-c",
                "setsid sleep 600 >/dev/null 2>&1 & echo $!",
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        escaped_pid = int(escaped.stdout)
        assert netns.leftovers(prefix)

        netns.teardown(state)
        netns.teardown(state)
        eventually(lambda: not builder.alive(recorded), 15)

        assert netns.leftovers(prefix) == []
        assert not state.exists()
        eventually(lambda: not Path(f"/proc/{escaped_pid}").exists() or _zombie(escaped_pid), 15)
    finally:
        builder.teardown()


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def test_two_owners_watcher_fires_only_on_a_real_duplicate(plumbing: Plumbing) -> None:
    """The watcher must be able to fail: a VIP put on two namespaces at once is caught."""
    net = netns.free_subnet(secrets.randbelow(400))
    plumbing.bridge()
    a = plumbing.add_host("a", f"{net[11]}/{net.prefixlen}")
    b = plumbing.add_host("b", f"{net[12]}/{net.prefixlen}")
    vip = str(net[100])
    watcher = TwoOwnersWatcher({"a": a.netns, "b": b.netns}, {vip}, interval=0.002)
    with watcher:
        netns.ip("addr", "add", f"{vip}/32", "dev", "eth0", netns=a.netns)
        eventually(lambda: watcher.result.sweeps > 20, 15)
        assert watcher.result.violations == []
        netns.ip("addr", "add", f"{vip}/32", "dev", "eth0", netns=b.netns)
        eventually(lambda: bool(watcher.result.violations), 15)
    violation = watcher.result.violations[0]
    assert violation.vip == vip and set(violation.nodes) == {"a", "b"}
    assert [holders for _, _, holders in watcher.result.changes] == [("a",), ("a", "b")]
