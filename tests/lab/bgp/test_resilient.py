"""The lab router's flow-keeping mode: BIRD's ECMP routes become a resilient next-hop group, and
a node's withdrawal moves only that node's buckets (so no flow on another node moves)."""

from __future__ import annotations

import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from haproxy_py.lab import bgplab, control, ecmp, netns, nhmirror
from tests.support.wait import eventually

pytestmark = [pytest.mark.lab, pytest.mark.timeout(300)]

ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[control.Lab]:
    prefix = "hbgr" + secrets.token_hex(1) + "-"
    run_dir = tmp_path_factory.mktemp("bgpres") / "lab"
    built = control.Lab.up(run_dir=run_dir, prefix=prefix, nodes=3, mode="bgp", say=lambda _: None)
    try:
        bgplab.use_resilient(built)
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
    ids = {nhmirror.object_id(n.address) for n in lab.layout.nodes}
    assert set(buckets(lab).values()) == ids
    eventually(lambda: bgplab.balanced(lab, vip), 30.0, "every node holding its share of buckets")
    assert "nhid" in netns.ip("route", "show", f"{vip}/32", netns=lab.layout.prefix + bgplab.ROUTER)
    assert set(ecmp.spread(lab, 90)) == {n.name for n in lab.layout.nodes}


def test_a_withdrawn_node_moves_only_its_own_buckets(lab: control.Lab) -> None:
    eventually(lambda: bgplab.ready(lab), 30.0, "every node in the group")
    before = buckets(lab)
    gone = nhmirror.object_id(lab.layout.node("node3").address)
    ecmp.withdrawal(lab, "node3", lambda: lab.kill("node3", "proxy"), limit=30)
    eventually(lambda: gone not in buckets(lab).values(), 30.0, "node3's buckets handed over")
    after = buckets(lab)
    kept = {i: nh for i, nh in before.items() if nh != gone}
    assert {i: after[i] for i in kept} == kept  # every other bucket points where it did
