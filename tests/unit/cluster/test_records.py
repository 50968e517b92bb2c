"""Records round-trip through JSON, and parsers shrug off whatever else etcd may hold."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from haproxy_py.cluster.controlkeys import PeerAddress
from haproxy_py.cluster.records import (
    ClusterPolicy,
    ClusterView,
    ControllerLeader,
    Event,
    KeyValue,
    Move,
    NodeRecord,
    Request,
    RequestResult,
    VipAssignment,
    parse_epoch,
)
from haproxy_py.cluster.schema import Schema

NODE = NodeRecord(
    "n1", "198.18.0.11", "eth0", 150, "1.0", True, 12.5, 2, 3, ("198.18.0.100",), 13.0
)
VIP = VipAssignment("198.18.0.100", "n1", 7, 10.0, "releasing", "manual", "n2", "r1", 11.0)
SETTINGS = ClusterPolicy("active-active", ("198.18.0.100",), True, 5.0, True, ("n3",))


def test_node_vip_and_settings_round_trip() -> None:
    assert NodeRecord.parse("n1", NODE.to_json()) == NODE
    assert VipAssignment.parse("198.18.0.100", VIP.to_json()) == VIP
    assert ClusterPolicy.parse(SETTINGS.to_json()) == SETTINGS


def test_request_result_event_and_leader_round_trip() -> None:
    result = RequestResult("done", "ok", 1.0, 2.0, 3.5, 1000.0, (Move("v", "a", "b"),), "c1")
    request = Request("r1", "move", "v", "b", None, 1.0, "hactl@x", result)
    assert Request.parse("r1", request.to_json()) == request
    event = Event(3, 1.0, "v", "a", "b", "node lost", 12.0, None)
    assert Event.parse(event.to_json()) == event
    leader = ControllerLeader("c1", 5.0, "http://127.0.0.1:9733/metrics")
    assert ControllerLeader.parse(leader.to_json()) == leader
    probed = ControllerLeader("c1", 5.0, peer=PeerAddress("198.18.0.1", 9735, "controller-n1"))
    assert ControllerLeader.parse(probed.to_json()) == probed
    bad_peer = b'{"id": "c1", "peer": {"address": "198.18.0.1", "port": 0, "name": "x"}}'
    assert ControllerLeader.parse(bad_peer) == ControllerLeader("c1", 0.0)


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"null",
        b"[]",
        b"{",
        b'"x"',
        b"\xff\xfe",
        b'{"node": 1, "state": "assigned"}',
        b'{"node": "n1", "state": "gone"}',
    ],
)
def test_junk_vip_values_parse_to_none(raw: bytes) -> None:
    assert VipAssignment.parse("v", raw) is None


def test_wrong_field_types_fall_back_to_safe_defaults() -> None:
    node = NodeRecord.parse("n", b'{"healthy": "yes", "priority": true, "vips": [1, "a"]}')
    assert node is not None
    assert (node.healthy, node.priority, node.vips) == (False, 100, ("a",))
    settings = ClusterPolicy.parse(b'{"mode": "active-standby", "failback_hold": -3}')
    assert settings is not None and settings.failback_hold == 30.0


def test_a_cause_this_version_does_not_know_is_never_passed_on() -> None:
    """A typed `Cause` holds: an assignment falls back to "initial" (no hand-over grace), an
    event with an unknown cause is unreadable."""
    vip = VipAssignment.parse("v", b'{"node": "n1", "state": "assigned", "cause": "gremlins"}')
    assert vip is not None and vip.cause == "initial"
    event = b'{"seq": 1, "vip": "v", "to": "n1", "cause": "gremlins"}'
    assert Event.parse(event) is None
    assert Event.parse(event.replace(b"gremlins", b"removed from the config")) is not None


def test_epoch_parsing() -> None:
    assert parse_epoch(b"42") == 42
    assert parse_epoch(b"x") == 0 and parse_epoch(b"-5") == 0


@given(st.binary(max_size=200))
def test_no_parser_ever_raises(raw: bytes) -> None:
    NodeRecord.parse("n", raw)
    VipAssignment.parse("v", raw)
    ClusterPolicy.parse(raw)
    Request.parse("r", raw)
    Event.parse(raw)
    ControllerLeader.parse(raw)
    parse_epoch(raw)


@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
        lambda c: st.lists(c) | st.dictionaries(st.text(), c),
        max_leaves=20,
    )
)
def test_no_parser_raises_on_any_json(obj: object) -> None:
    raw = json.dumps(obj).encode()
    for parse in (NodeRecord.parse, VipAssignment.parse, Request.parse):
        parse("k", raw)
    ClusterPolicy.parse(raw)
    Event.parse(raw)


def test_view_sorts_out_keys_and_keeps_unreadable_vips_occupied() -> None:
    s = Schema("c")
    kvs = [
        KeyValue(s.node("n1"), NodeRecord("n1", healthy=True).to_json(), 2, 2, lease=9),
        KeyValue(s.vip("v1"), b"junk", 3, 3, lease=9),
        KeyValue(s.vip("v2"), VipAssignment("v2", "n1", 1, 1.0).to_json(), 4, 4, lease=9),
        KeyValue(s.leader, ControllerLeader("c1", 1.0).to_json(), 5, 5, lease=7),
        KeyValue(s.event(1), Event(1, 1.0, "v2", None, "n1", "initial").to_json(), 6, 6),
        KeyValue(s.epoch, b"1", 6, 6),
        KeyValue("/haproxy-py/other/nodes/x", b"{}", 7, 7),
        KeyValue(s.revoked(0xABC), b'{"wait": 1.3, "by": "c2"}', 8, 8, lease=11),
        KeyValue(s.revoked(0xDEF), b'{"by": "c2"}', 8, 8, lease=11),  # no wait: unreadable
    ]
    view = ClusterView.from_kvs(s, kvs, 7)
    assert view.revoked == {0xABC: 1.3}
    assert list(view.nodes) == ["n1"] and view.nodes["n1"].lease == 9
    assert view.occupied == {"v1", "v2"} and list(view.vips) == ["v2"]
    assert view.vips["v2"].lease == 9 and view.vips["v2"].mod_revision == 4
    assert view.leader is not None and view.leader.create_revision == 5
    assert view.epoch == 1 and view.epoch_mod_revision == 6
    assert view.last_event("v2") is not None and view.vips_of("n1") == ("v2",)
    assert len(view.problems) == 2 and "vips/v1" in view.problems[0]
    assert "revoked/def" in view.problems[1]


def test_schema_keys() -> None:
    s = Schema("edge")
    assert s.node("a") == "/haproxy-py/edge/nodes/a"
    assert s.vip("198.18.0.1") == "/haproxy-py/edge/vips/198.18.0.1"
    assert s.leader == "/haproxy-py/edge/controller/leader"
    assert s.event(12) == "/haproxy-py/edge/events/000000000012"
    assert s.relative("/haproxy-py/edge/config") == "config"
    assert s.relative("/haproxy-py/edge2/config") is None
    with pytest.raises(ValueError):
        Schema("a/b")


def test_the_view_range_holds_every_section_the_view_reads_and_leaves_announce_out() -> None:
    schema = Schema("c")
    start, end = schema.view_range()
    read = [
        schema.node("n1"),
        schema.vip("198.18.0.100"),
        schema.request("r1"),
        schema.event(7),
        schema.leader,
        schema.config,
        schema.epoch,
    ]
    assert all(start <= key < end for key in read)
    assert not start <= schema.announce("n1") < end
    assert not start <= Schema("c2").node("n1") < end  # another cluster's keys
