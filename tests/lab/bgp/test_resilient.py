"""The lab router's flow-keeping mode: BIRD's ECMP routes become a resilient next-hop group, and
a node's withdrawal moves only that node's buckets (so no flow on another node moves); a node's
graceful shutdown keeps it in the group at the lowest weight, so its established WebSockets stay
on it until the drain timeout, when they get 1001 before the route goes."""

from __future__ import annotations

import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from haproxy_py.lab import bgplab, control, echoclients, ecmp, netns, nhmirror
from haproxy_py.lab.layout import PROXY_PORT
from tests.support.wait import eventually

pytestmark = [pytest.mark.lab, pytest.mark.timeout(300)]

ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[control.Lab]:
    prefix = "hbgr" + secrets.token_hex(1) + "-"
    run_dir = tmp_path_factory.mktemp("bgpres") / "lab"
    built = control.Lab.up(run_dir=run_dir, prefix=prefix, nodes=3, mode="bgp", say=lambda _: None)
    try:
        built.use_resilient_router()
        yield built
    finally:
        shutil.copytree(built.paths.logs, ARTIFACTS / "lab-logs-bgp-resilient", dirs_exist_ok=True)
        control.down(run_dir)
        assert netns.leftovers(prefix) == []
        assert not run_dir.exists()


def buckets(lab: control.Lab) -> dict[int, int]:
    return bgplab.buckets(lab, lab.layout.vips[0])


def test_the_vip_route_uses_a_resilient_group_of_every_node(lab: control.Lab) -> None:
    vip = lab.layout.vips[0]
    eventually(lambda: bgplab.resilient_group(lab, vip) is not None, 30.0, "the group")
    eventually(lambda: bgplab.ready(lab), 30.0, "every node in the group")
    group = bgplab.resilient_group(lab, vip)
    assert group is not None and group["type"] == "resilient"
    # Every node at full weight: the paths' weights from before the switch (1) are gone.
    eventually(lambda: bgplab.balanced(lab, vip), 30.0, "every node holding its share of buckets")
    assert "nhid" in netns.ip("route", "show", f"{vip}/32", netns=lab.layout.prefix + bgplab.ROUTER)
    assert set(ecmp.spread(lab, 90)) == {n.name for n in lab.layout.nodes}


def held(lab: control.Lab, node: str) -> int:
    mine = nhmirror.object_id(lab.layout.node(node).address)
    return sum(1 for nh in buckets(lab).values() if nh == mine)


def weight(lab: control.Lab, node: str) -> int | None:
    """`node`'s weight in the router's group (None: not in it)."""
    mine = nhmirror.object_id(lab.layout.node(node).address)
    return bgplab.weights(lab, lab.layout.vips[0]).get(mine)


def via(events: list[dict[str, Any]]) -> dict[int, str]:
    """Client -> the node of its latest connection."""
    return {e["client"]: e["via"] for e in events if e["event"] == "connected"}


def test_a_graceful_shutdown_keeps_established_websockets_until_the_drain_timeout(
    lab: control.Lab, tmp_path: Path
) -> None:
    vip, clients = lab.layout.vips[0], 30
    eventually(lambda: bgplab.balanced(lab, vip), 60.0, "every node holding its share")
    out = tmp_path / "echo.jsonl"
    argv = ["ip", "netns", "exec", lab.layout.client.netns, sys.executable, "-m"]
    argv += ["haproxy_py.lab.echoclients", f"http://{vip}:{PROXY_PORT}/echo", "150", str(out)]
    fleet = subprocess.Popen([*argv, "0", str(clients)])  # a frame every 100 ms each
    try:
        eventually(lambda: len(via(echoclients.read(str(out)))) == clients, 30.0, "clients")
        on_node2 = {c for c, n in via(echoclients.read(str(out))).items() if n == "node2"}
        assert on_node2, "no WebSocket hashed to node2 (30 clients over 3 nodes)"
        before = held(lab, "node2")
        assert lab.hactl("drain", "node2", "--yes").returncode == 0
        try:
            eventually(lambda: weight(lab, "node2") == nhmirror.DRAINING, 30.0, "lowest weight")
            # after the idle timer the idle buckets have moved; the busy ones stay on node2
            eventually(
                lambda: 0 < held(lab, "node2") < before,
                nhmirror.IDLE + 8.0,
                "node2 keeping only its busy buckets",
            )
            events = echoclients.read(str(out))
            assert [e for e in events if e["event"] in ("error", "closed")] == []
            assert on_node2 <= {c for c, n in via(events).items() if n == "node2"}
            eventually(
                lambda: weight(lab, "node2") is None,
                bgplab.DRAIN_TIMEOUT + 20.0,
                "node2 withdrawn after its drain timeout",
            )
            time.sleep(1.0)  # the clients reconnected elsewhere
        finally:
            assert lab.hactl("undrain", "node2").returncode == 0
    finally:
        fleet.terminate()
        fleet.wait(30)
    events = echoclients.read(str(out))
    assert [e for e in events if e["event"] == "error"] == []  # 0 broken, on any node
    told = {e["client"] for e in events if e["event"] == "closed" and e["code"] == 1001}
    assert on_node2 <= told
    eventually(lambda: bgplab.ready(lab), 30.0, "node2 announced again")


def test_a_withdrawn_node_moves_only_its_own_buckets(lab: control.Lab) -> None:
    eventually(lambda: bgplab.ready(lab), 30.0, "every node in the group")
    before = buckets(lab)
    gone = nhmirror.object_id(lab.layout.node("node3").address)
    ecmp.withdrawal(lab, "node3", lambda: lab.kill("node3", "proxy"), limit=30)
    eventually(lambda: gone not in buckets(lab).values(), 30.0, "node3's buckets handed over")
    after = buckets(lab)
    kept = {i: nh for i, nh in before.items() if nh != gone}
    assert {i: after[i] for i in kept} == kept  # every other bucket points where it did
