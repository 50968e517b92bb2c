"""Requests are checked against a snapshot before they are written (pure)."""

from __future__ import annotations

import pytest

from haproxy_py.cluster.records import (
    ClusterPolicy,
    ClusterView,
    ControllerLeader,
    Move,
    NodeRecord,
    RequestResult,
    VipAssignment,
)
from haproxy_py.hactl import intent
from haproxy_py.hactl.errors import NoLeader, NotFound, Refused

VIP = "198.18.0.100"


def _snapshot(**overrides: object) -> ClusterView:
    fields: dict[str, object] = {
        "cluster": "lab",
        "revision": 1,
        "nodes": {
            "node-a": NodeRecord("node-a", healthy=True),
            "node-b": NodeRecord("node-b", healthy=True),
            "node-c": NodeRecord("node-c", healthy=False),
        },
        "vips": {VIP: VipAssignment(VIP, "node-a", epoch=1, since=1.0)},
        "occupied": frozenset({VIP}),
        "leader": ControllerLeader("ctl-1", since=1.0),
        "settings": ClusterPolicy(vips=(VIP,), drained=("node-d",)),
    }
    fields.update(overrides)
    return ClusterView(**fields)


class TestCheckFailover:
    def test_good_request_passes(self) -> None:
        intent.check_failover(_snapshot(), VIP, "node-b")
        intent.check_failover(_snapshot(), None, None)

    def test_no_leader(self) -> None:
        with pytest.raises(NoLeader, match="no controller leader in cluster 'lab': failover"):
            intent.check_failover(_snapshot(leader=None), VIP, "node-b")

    def test_unknown_node_lists_the_known(self) -> None:
        with pytest.raises(
            NotFound, match=r"unknown node 'node-x' \(known: node-a, node-b, node-c\)"
        ):
            intent.check_failover(_snapshot(), VIP, "node-x")

    def test_unknown_vip_lists_the_known(self) -> None:
        with pytest.raises(NotFound, match=rf"unknown VIP '10.0.0.1' \(known: {VIP}\)"):
            intent.check_failover(_snapshot(), "10.0.0.1", None)

    def test_prompt_names_what_moves(self) -> None:
        """In active-standby every VIP moves together, and the prompt says so."""
        settings = ClusterPolicy(vips=(VIP, "198.18.0.101"))
        snapshot = _snapshot(settings=settings)
        assert intent.failover_prompt(snapshot, VIP, "node-b") == (
            f"Move {VIP} (now on node-a), 198.18.0.101 (now on nobody) to node-b?"
        )
        spread = _snapshot(settings=ClusterPolicy(mode="active-active", vips=settings.vips))
        assert intent.failover_prompt(spread, VIP, None) == (
            f"Move {VIP} (now on node-a) to the best other healthy node?"
        )


class TestRequireNode:
    def test_drained_node_is_known_to_undrain(self) -> None:
        intent.require_node(_snapshot(), "node-d", include_drained=True)
        with pytest.raises(NotFound):
            intent.require_node(_snapshot(), "node-d")


class TestDescribeResult:
    def test_done_move_prints_from_to_and_time(self) -> None:
        request = intent.new_request("move", 1.0, vip=VIP, target="node-b")
        result = RequestResult(
            "done", "moved", duration_ms=38.2, gap_ms=11.6, moves=(Move(VIP, "node-a", "node-b"),)
        )
        assert intent.describe_result(request, result) == [
            f"{VIP}: node-a -> node-b in 38 ms (VIP unowned for 12 ms)"
        ]

    def test_refused_raises_with_the_reason(self) -> None:
        request = intent.new_request("move", 1.0, vip=VIP, target="node-b")
        with pytest.raises(
            Refused, match="controller refused the move request: node-b is draining"
        ):
            intent.describe_result(request, RequestResult("refused", "node-b is draining"))

    def test_ids_are_unique_and_time_ordered(self) -> None:
        first = intent.new_request("pause", 1.0)
        second = intent.new_request("pause", 2.0)
        assert first.id < second.id
        assert intent.new_request("pause", 1.0).id != first.id

    def test_the_requester_is_the_certificate_identity_first(self) -> None:
        """m6: the audit trail names the etcd identity; the local account is only a hint."""
        assert intent.requester("operator-alice", "root", "vm") == "operator-alice (root@vm)"
        assert intent.requester(None, "root", "vm") == "root@vm"
