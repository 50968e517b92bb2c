"""BGP mode in the lab: four nodes announce one VIP to a real router (BIRD), which spreads the
client's connections over them with ECMP, sees each node over BFD, and loses a node's path when
its proxy dies, also while the node's announcer is killed or frozen."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest

from haproxy_py.cluster import bird
from haproxy_py.lab import bgplab, control, ecmp, netns
from haproxy_py.lab.layout import ADMIN_PORT
from tests.support.wait import eventually

pytestmark = [pytest.mark.lab, pytest.mark.timeout(600)]

ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"
NODES = 4
SETTLE = 30.0  # generous: the machine is shared; the real figures are in bench/


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[control.Lab]:
    prefix = "hbgp" + secrets.token_hex(1) + "-"
    run_dir = tmp_path_factory.mktemp("bgp") / "lab"
    built = control.Lab.up(
        run_dir=run_dir, prefix=prefix, nodes=NODES, mode="bgp", say=lambda _: None
    )
    try:
        yield built
    finally:
        shutil.copytree(built.paths.logs, ARTIFACTS / "lab-logs-bgp", dirs_exist_ok=True)
        control.down(run_dir)
        assert netns.leftovers(prefix) == []
        assert not run_dir.exists()


def addresses(lab: control.Lab, *names: str) -> list[str]:
    return sorted(n.address for n in lab.layout.nodes if not names or n.name in names)


def all_paths(lab: control.Lab) -> bool:
    return bgplab.next_hops(lab, lab.layout.vips[0]) == addresses(lab)


def signal_node(lab: control.Lab, label: str, sig: int) -> None:
    procs = [p for p in lab.plumbing.procs(label) if lab.plumbing.alive(p)]
    assert procs, f"{label} is not running"
    os.kill(procs[0].pid, sig)


@pytest.fixture
def whole(lab: control.Lab) -> Iterator[control.Lab]:
    """Every test starts and ends with every node announcing."""
    eventually(lambda: all_paths(lab), SETTLE, "every node's path at the router")
    yield lab
    for node in lab.layout.nodes:
        for label in (f"{node.name}/agent", f"{node.name}/proxy"):
            for p in lab.plumbing.procs(label):
                if lab.plumbing.alive(p):
                    os.kill(p.pid, signal.SIGCONT)
        lab.restart(node.name)
    eventually(lambda: all_paths(lab), SETTLE, "every node's path back at the router")


def test_every_node_announces_and_the_router_has_one_ecmp_next_hop_per_node(
    whole: control.Lab,
) -> None:
    found = bird.protocols(bgplab.router_query(whole, "show protocols"))
    assert {n.name: found[n.name].info for n in whole.layout.nodes} == {
        n.name: "Established" for n in whole.layout.nodes
    }
    assert bgplab.next_hops(whole, whole.layout.vips[0]) == addresses(whole)


def test_bfd_is_up_between_the_router_and_every_node(whole: control.Lab) -> None:
    assert bgplab.bfd_states(whole) == {a: "Up" for a in addresses(whole)}


def test_the_vip_lives_on_each_nodes_loopback_and_nodes_answer_no_arp_for_it(
    whole: control.Lab,
) -> None:
    vip = whole.layout.vips[0]
    for node in whole.layout.nodes:
        assert f"{vip}/32" in netns.ip("-4", "addr", "show", "dev", "lo", netns=node.netns)
    # The router reaches the VIP only through its BGP routes: no neighbour entry for it.
    neigh = netns.ip("neigh", "show", vip, netns=whole.layout.prefix + bgplab.ROUTER)
    assert vip not in neigh


def test_new_connections_from_the_client_spread_over_every_node(whole: control.Lab) -> None:
    counts = ecmp.spread(whole, 400)
    assert counts.get(ecmp.FAILED, 0) == 0
    # 100 expected per node; a node below 40 would mean the hash is not per connection.
    assert {n.name for n in whole.layout.nodes} == set(counts)
    assert min(counts.values()) >= 40, counts


def test_a_node_whose_proxy_dies_is_withdrawn(whole: control.Lab) -> None:
    ecmp.withdrawal(whole, "node1", lambda: whole.kill("node1", "proxy"), limit=SETTLE)
    assert bgplab.next_hops(whole, whole.layout.vips[0]) == addresses(
        whole, "node2", "node3", "node4"
    )
    assert ecmp.spread(whole, 40).get("node1", 0) == 0


def test_a_hung_proxy_is_withdrawn_by_the_announcer(whole: control.Lab) -> None:
    ecmp.withdrawal(
        whole, "node2", lambda: signal_node(whole, "node2/proxy", signal.SIGSTOP), limit=SETTLE
    )


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGSTOP], ids=["SIGKILL", "SIGSTOP"])
def test_an_announcer_gone_or_frozen_withdraws_nothing_yet_a_proxy_death_still_withdraws(
    whole: control.Lab, sig: int
) -> None:
    signal_node(whole, "node3/agent", sig)
    time.sleep(2.0)  # an announcer's restart or a stall of this length withdraws nothing
    assert all_paths(whole)
    ecmp.withdrawal(whole, "node3", lambda: whole.kill("node3", "proxy"), limit=SETTLE)
    # The restarted proxy comes back only once the announcer says it can serve.
    if sig == signal.SIGSTOP:
        signal_node(whole, "node3/agent", signal.SIGCONT)


def test_a_routine_announcer_restart_withdraws_nothing(whole: control.Lab) -> None:
    whole.kill("node1", "agent")
    whole.restart("node1")
    deadline = time.monotonic() + 3.0  # the new announcer probes, reads BIRD, checks the link
    while time.monotonic() < deadline:
        assert all_paths(whole), "node1's path went while its announcer restarted"
        time.sleep(0.01)
    assert [p for p in whole.plumbing.procs("node1/agent") if whole.plumbing.alive(p)]


def admin_post(lab: control.Lab, node: str, path: str) -> int:
    """POST to a node's proxy admin API (loopback inside the node's namespace)."""

    def post() -> int:
        url = f"http://127.0.0.1:{ADMIN_PORT}{path}"
        with urllib.request.urlopen(urllib.request.Request(url, method="POST"), timeout=5) as r:
            return int(r.status)

    return netns.in_netns(lab.layout.node(node).netns, post)


def test_a_drained_proxy_is_withdrawn_and_announced_again_when_undrained(
    whole: control.Lab,
) -> None:
    ecmp.withdrawal(whole, "node2", lambda: admin_post(whole, "node2", "/drain"), limit=SETTLE)
    assert admin_post(whole, "node2", "/undrain") == 200
    eventually(lambda: all_paths(whole), SETTLE, "node2 announced again after the undrain")


def test_a_restarted_proxy_is_announced_again(whole: control.Lab) -> None:
    whole.kill("node4", "proxy")
    eventually(lambda: not all_paths(whole), SETTLE, "node4 withdrawn")
    whole.restart("node4")
    eventually(lambda: all_paths(whole), SETTLE, "node4 announced again")


def test_an_operators_drain_goes_through_etcd_with_a_graceful_shutdown_first(
    whole: control.Lab,
) -> None:
    vip = whole.layout.vips[0]
    node2 = whole.layout.node("node2").address

    def path_of_node2(detail: str = "") -> str:
        return bgplab.router_query(whole, f"show route {vip}/32 protocol node2 {detail}").text

    def graceful_shutdown() -> bool:
        """node2's path is still at the router, tagged GRACEFUL_SHUTDOWN (RFC 8326), and the
        router's ECMP route already leaves it out."""
        return "(65535,0)" in path_of_node2("all") and node2 not in bgplab.next_hops(whole, vip)

    done = whole.hactl("drain", "node2", "--yes")
    assert done.returncode == 0, done.stderr
    try:
        eventually(graceful_shutdown, SETTLE, "node2's path tagged GRACEFUL_SHUTDOWN", every=0.01)
        eventually(lambda: vip not in path_of_node2(), SETTLE, "node2's path gone after the hold")
        assert node2 not in bgplab.next_hops(whole, vip)
    finally:
        assert whole.hactl("undrain", "node2").returncode == 0
    eventually(lambda: all_paths(whole), SETTLE, "node2 announced again after the undrain")


def test_a_node_cut_off_alone_from_etcd_withdraws_by_the_failsafe_rule(
    whole: control.Lab,
) -> None:
    whole.partition("node3")  # from etcd and its peers; the router and clients still reach it
    try:
        rest = addresses(whole, "node1", "node2", "node4")
        eventually(
            lambda: bgplab.next_hops(whole, whole.layout.vips[0]) == rest, SETTLE, "withdrawn"
        )
    finally:
        whole.heal("node3")
    eventually(lambda: all_paths(whole), SETTLE, "node3 announced again after the heal")


def test_with_etcd_down_for_everyone_every_node_keeps_announcing(whole: control.Lab) -> None:
    members = [m.name for m in whole.layout.etcd]
    for name in members:
        whole.kill(name)
    try:
        until = time.monotonic() + 3 * whole.layout.timing.lease_ttl  # well past every lease
        while time.monotonic() < until:
            assert all_paths(whole), "a node withdrew while etcd was down for every node"
            time.sleep(0.05)
    finally:
        for name in members:
            whole.restart(name)
        eventually(whole.etcd_healthy, SETTLE, "etcd back")


def test_hactl_status_and_the_agents_metrics_show_announcers_sessions_and_bfd(
    whole: control.Lab,
) -> None:
    vip = whole.layout.vips[0]
    names = [n.name for n in whole.layout.nodes]

    def status() -> dict[str, Any]:
        done = whole.hactl("status", "-o", "json")
        assert done.returncode == 0, done.stderr
        return cast(dict[str, Any], json.loads(done.stdout))

    def settled() -> bool:
        s = status()
        sessions = {n["name"]: n["bgp"] for n in s["nodes"]}
        return s["vips"][0]["announcers"] == names and all(
            v == {"uplink": "Established, BFD Up"} for v in sessions.values()
        )

    eventually(settled, SETTLE, "every node announcing, its session and BFD up")
    table = whole.hactl("status").stdout
    assert f"{vip}" in table and ", ".join(names) in table
    assert "bgp: node1 -> uplink: Established, BFD Up" in table

    def metrics() -> str:
        url = "http://127.0.0.1:9732/metrics"
        with urllib.request.urlopen(url, timeout=5) as r:
            return str(r.read().decode())

    text = netns.in_netns(whole.layout.node("node1").netns, metrics)
    assert 'haproxy_py_agent_bgp_session_up{peer="uplink"} 1' in text, text
    assert 'haproxy_py_agent_bfd_session_up{peer="uplink"} 1' in text
    assert "haproxy_py_agent_bgp_announced_vips 1" in text
