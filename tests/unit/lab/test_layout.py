"""The lab's pure parts: layout planning, the files it writes (read back by the daemons' own
parsers), the netlink address parser and the client-gap arithmetic."""

from __future__ import annotations

import socket
import struct
from pathlib import Path

import pytest

from haproxy_py import pki
from haproxy_py.cluster.agent_config import parse_agent
from haproxy_py.cluster.config import parse_cluster, parse_controller, parse_etcd, parse_node
from haproxy_py.cluster.timing import PROFILES
from haproxy_py.configfile import load
from haproxy_py.lab import layout as lay
from haproxy_py.lab.client import Attempt, outage
from haproxy_py.lab.watch import parse_addresses
from haproxy_py.proxy.config import parse_proxy


def test_plan_places_everyone_in_one_lab_subnet() -> None:
    layout = lay.plan("hapy-", "198.18.200.0/24", 3, "active-active", None)
    assert [n.name for n in layout.nodes] == ["node1", "node2", "node3"]
    assert layout.nodes[0].netns == "hapy-node1" and layout.nodes[0].address == "198.18.200.21"
    assert layout.vips == ("198.18.200.100", "198.18.200.101", "198.18.200.102")
    assert layout.client.address == "198.18.200.41"
    addresses = [m.address for m in layout.members] + list(layout.vips) + [layout.host_address]
    assert len(set(addresses)) == len(addresses)
    assert lay.plan("p-", "198.18.5.0/24", 2, "active-standby", None).vips == ("198.18.5.100",)


@pytest.mark.parametrize(
    ("nodes", "mode", "vips", "message"),
    [
        (0, "active-standby", None, "--nodes must be 1 to 8"),
        (2, "hot-spare", None, "--mode must be one of"),
        (2, "active-standby", 17, "--vips must be 1 to 16"),
    ],
)
def test_plan_refuses_impossible_shapes(
    nodes: int, mode: str, vips: int | None, message: str
) -> None:
    with pytest.raises(lay.LayoutError, match=message):
        lay.plan("hapy-", "198.18.200.0/24", nodes, mode, vips)


def test_layout_survives_a_round_trip(tmp_path: Path) -> None:
    layout = lay.plan("hapy-", "198.18.200.0/24", 2, "active-standby", 2)
    layout.save(tmp_path / "lab.json")
    assert lay.Layout.load(tmp_path / "lab.json") == layout
    doc = layout.status_json()
    assert {"nodes", "client_netns", "vips", "port", "etcd", "host_url"} <= set(doc)
    assert doc["nodes"][0] == {"name": "node1", "netns": "hapy-node1", "address": "198.18.200.21"}


@pytest.mark.parametrize(
    ("mode", "profile"), [(m, "default") for m in lay.MODES] + [(lay.MODES[0], "fast")]
)
def test_node_config_is_what_every_daemon_accepts(tmp_path: Path, mode: str, profile: str) -> None:
    """The file `lab up` writes parses with the proxy's, agent's and controller's own parsers."""
    layout = lay.plan("hapy-", "198.18.200.0/24", 2, mode, None, profile)
    ca = tmp_path / "pki"
    pki.init_ca(ca)
    for daemon in ("agent", "controller"):
        pki.issue(ca, f"{daemon}-node1", client=True)
    path = tmp_path / "node1.toml"
    path.write_text(lay.node_config(layout, layout.nodes[0], ca, priority=200))
    doc = load(path)
    assert parse_node(doc).name == "node1"
    proxy = parse_proxy(doc)
    assert [(lsn.host, lsn.port) for lsn in proxy.listeners] == [
        (vip, lay.PROXY_PORT) for vip in layout.vips
    ]
    assert len(proxy.backends["app"].servers) == 2
    cluster = parse_cluster(doc)
    assert cluster.mode == mode and cluster.vips == layout.vips
    assert cluster.failback == (mode == "active-active")
    if mode == "active-active":
        assert cluster.failback_hold == lay.FAILBACK_HOLD
    etcd = parse_etcd(doc)
    assert etcd.tls and len(etcd.endpoints) == 3 and etcd.cert is None
    for daemon in ("agent", "controller"):  # each daemon connects as itself
        assert parse_etcd(doc, daemon).cert == ca / f"{daemon}-node1.crt"
    controller = parse_controller(doc, etcd)
    assert controller.id == "node1"
    agent = parse_agent(doc)  # its timing check at load passes
    assert agent.proxy_admin_url == f"http://127.0.0.1:{lay.ADMIN_PORT}"
    assert agent.timing.lease_ttl == controller.lease_ttl == PROFILES[profile].lease_ttl
    assert agent.timing.lapse == PROFILES[profile].lapse
    assert agent.peer_crl == ca / "ca.crl" and agent.peer_port > 0 and cluster.failsafe


def _newaddr(address: str) -> bytes:
    attr = struct.pack("=HH", 8, 2) + socket.inet_aton(address)
    body = struct.pack("=BBBBI", socket.AF_INET, 32, 0, 0, 2) + attr
    return struct.pack("=LHHLL", 16 + len(body), 20, 2, 1, 0) + body


def test_address_dump_parsing() -> None:
    done = struct.pack("=LHHLLi", 20, 3, 2, 1, 0, 0)
    found, finished = parse_addresses(_newaddr("198.18.0.100") + _newaddr("127.0.0.1"))
    assert found == {"198.18.0.100", "127.0.0.1"} and not finished
    assert parse_addresses(done) == (set(), True)


def test_outage_is_measured_from_the_last_answer_to_the_new_nodes_first() -> None:
    attempts = [
        Attempt(0.00, 0.01, "node1"),
        Attempt(1.00, 1.01, "node1"),  # old node still answering after the fault
        Attempt(1.10, 2.10, None),
        Attempt(1.50, 1.51, "node2"),
        Attempt(1.60, 1.61, "node2"),
    ]
    seen = outage(attempts, fault=0.5, old_node="node1")
    assert seen.new_node == "node2"
    assert seen.gap == pytest.approx(0.5)
    assert seen.first_new == pytest.approx(1.0)
    assert seen.failed == 1
    assert outage(attempts[:3], fault=0.5, old_node="node1").gap is None
