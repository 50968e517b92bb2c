"""What status and history show, from one cluster snapshot (pure, no etcd)."""

from __future__ import annotations

import json

import click

from haproxy_py.cluster.records import (
    ClusterPolicy,
    ClusterView,
    ControllerLeader,
    Event,
    NodeRecord,
    VipAssignment,
)
from haproxy_py.hactl import view

NOW = 1_800_000_000.0
VIP = "198.18.0.100"


def _snapshot(**overrides: object) -> ClusterView:
    fields: dict[str, object] = {
        "cluster": "lab",
        "revision": 7,
        "nodes": {
            "node-a": NodeRecord(
                "node-a",
                address="198.18.0.11",
                healthy=True,
                priority=150,
                backends_up=2,
                backends_total=2,
                ready=1,
                pools=1,
                lease=11,
            ),
            "node-b": NodeRecord("node-b", address="198.18.0.12", healthy=True, priority=100),
            "node-c": NodeRecord("node-c", address="198.18.0.13", healthy=False),
        },
        "vips": {VIP: VipAssignment(VIP, "node-a", epoch=3, since=NOW - 90, lease=11)},
        "occupied": frozenset({VIP}),
        "leader": ControllerLeader("ctl-1", since=NOW - 300, lease=5),
        "settings": ClusterPolicy(vips=(VIP, "198.18.0.101")),
        "epoch": 3,
    }
    fields.update(overrides)
    return ClusterView(**fields)


def _roles(status: view.StatusView) -> dict[str, str]:
    return {n.name: n.role for n in status.nodes}


class TestRoles:
    def test_active_standby_down(self) -> None:
        """The VIP holder is active, a healthy node standby, an unhealthy one down."""
        status = view.status_view(_snapshot(), {})
        assert _roles(status) == {"node-a": "active", "node-b": "standby", "node-c": "down"}

    def test_drained_node_is_draining_then_down_when_gone(self) -> None:
        """A drained node shows as draining, and stays listed (down) after it deregisters."""
        settings = ClusterPolicy(vips=(VIP,), drained=("node-b", "node-x"))
        status = view.status_view(_snapshot(settings=settings), {})
        roles = _roles(status)
        assert roles["node-b"] == "draining"
        assert roles["node-x"] == "down"
        assert not next(n for n in status.nodes if n.name == "node-x").registered


class TestStatusJson:
    def test_stable_keys(self) -> None:
        """The documented keys are present with the documented types."""
        doc = view.status_json(view.status_view(_snapshot(), {"node-a": 1.5}))
        json.dumps(doc)  # serialisable as it is
        assert doc["cluster"] == "lab"
        assert doc["mode"] == "active-standby"
        assert doc["paused"] is False
        assert doc["epoch"] == 3
        assert doc["controller"] == "ctl-1"
        node_a = doc["nodes"][0]
        assert node_a["name"] == "node-a"
        assert node_a["address"] == "198.18.0.11"
        assert node_a["role"] == "active"
        assert node_a["healthy"] is True
        assert node_a["vips"] == [VIP]
        assert node_a["lease_left"] == 1.5
        assert (node_a["ready"], node_a["pools"]) == (1, 1)
        assert doc["vips"] == [
            {
                "address": VIP,
                "owner": "node-a",
                "state": "assigned",
                "since": view.iso(NOW - 90),
                "cause": "initial",
                "move_to": None,
            },
            {
                "address": "198.18.0.101",
                "owner": None,
                "state": "unassigned",
                "since": None,
                "cause": None,
                "move_to": None,
            },
        ]

    def test_no_leader_no_settings(self) -> None:
        doc = view.status_json(view.status_view(_snapshot(leader=None, settings=None), {}))
        assert doc["controller"] is None
        assert doc["mode"] is None
        assert [v["address"] for v in doc["vips"]] == [VIP]


class TestStatusTable:
    def test_rows_and_header(self) -> None:
        """One row per node and per VIP, with the header naming cluster, mode and leader."""
        text = click.unstyle(view.status_table(view.status_view(_snapshot(), {"node-a": 1.5}), NOW))
        lines = text.splitlines()
        assert lines[0].startswith("Cluster: lab  mode: active-standby  controller: ctl-1")
        node_a = next(line for line in lines if line.startswith("node-a"))
        assert node_a.split() == [
            "node-a",
            "198.18.0.11",
            "active",
            "healthy",
            VIP,
            "2/2",
            "1/1",
            "2s",
            "150",
        ]
        vip_line = next(line for line in lines if line.startswith(VIP))
        assert vip_line.split()[:3] == [VIP, "node-a", "assigned"]
        assert "(2m ago)" in vip_line
        assert lines[0].endswith("maintenance: off")
        assert "Maintenance" not in text

    def test_paused_and_leaderless_are_called_out(self) -> None:
        snap = _snapshot(leader=None, settings=ClusterPolicy(vips=(VIP,), paused=True))
        text = click.unstyle(view.status_table(view.status_view(snap, {}), NOW))
        assert text.splitlines()[0].endswith("maintenance: on")
        assert "Maintenance mode: on" in text
        assert "No controller leader" in text

    def test_columns_align_with_colour(self) -> None:
        """Colour codes do not shift columns: styled and unstyled rows line up."""
        styled = view.status_table(view.status_view(_snapshot(), {}), NOW)
        plain_lines = click.unstyle(styled).splitlines()
        header = next(line for line in plain_lines if line.startswith("NODE"))
        for line in plain_lines:
            if line.startswith("node-"):
                assert line[header.index("ROLE") :].split()[0] in {"active", "standby", "down"}

    def test_terminal_escapes_from_etcd_are_shown_not_obeyed(self) -> None:
        """Review m2: a node name, owner or controller id written with ESC/OSC sequences and
        newlines prints as visible escapes, so it can neither fake nor hide rows."""
        evil = "node3\x1b]0;owned\x07\x1b[2K\nnode2"
        snapshot = _snapshot(
            nodes={evil: NodeRecord(evil, address="198.18.0.13\x9b1A", healthy=True)},
            vips={VIP: VipAssignment(VIP, evil, epoch=3, since=NOW - 90)},
            leader=ControllerLeader("ctl\x1b[31m", since=NOW - 300),
        )
        text = view.status_table(view.status_view(snapshot, {}), NOW)
        plain = click.unstyle(text)
        for raw in ("\x1b]", "\x07", "\x9b", "\x1b[2K", "\x1b[31m"):
            assert raw not in plain
        assert "node3\\x1b]0;owned\\x07\\x1b[2K\\x0anode2" in plain
        assert "198.18.0.13\\x9b1A" in plain
        assert "controller: ctl\\x1b[31m" in plain
        assert not any(line.startswith("node2") for line in plain.splitlines())


class TestHistory:
    EVENTS = (
        Event(1, NOW - 60, VIP, None, "node-a", "initial"),
        Event(2, NOW, VIP, "node-a", "node-b", "manual", gap_ms=38.4, request="r1"),
    )

    def test_table(self) -> None:
        lines = click.unstyle(view.history_table(self.EVENTS)).splitlines()
        assert lines[0].split() == ["EPOCH", "TIME", "VIP", "FROM", "TO", "CAUSE", "GAP"]
        assert lines[2].split() == [
            "2",
            view.iso(NOW),
            VIP,
            "node-a",
            "node-b",
            "manual",
            "38",
            "ms",
        ]
        assert lines[1].split()[3] == "-"

    def test_json(self) -> None:
        doc = view.history_json(self.EVENTS)
        assert doc[1] == {
            "seq": 2,
            "time": view.iso(NOW),
            "vip": VIP,
            "from": "node-a",
            "to": "node-b",
            "cause": "manual",
            "gap_ms": 38.4,
            "request": "r1",
        }

    def test_empty(self) -> None:
        assert view.history_table(()) == "No events yet."


def test_iso_has_milliseconds_and_utc() -> None:
    assert view.iso(1_800_000_000.1234) == "2027-01-15T08:00:00.123Z"


def test_milliseconds_keep_small_values_visible() -> None:
    """A sub-millisecond gap reads 0.1 ms, not 0 ms; larger ones are whole."""
    assert view.milliseconds(0.086) == "0.1 ms"
    assert view.milliseconds(38.4) == "38 ms"


class TestRepairs:
    def test_states_the_controller_repairs_are_shown_meanwhile(self) -> None:
        ghost = VipAssignment(VIP, "ghost", epoch=4, since=NOW - 5, lease=99, mod_revision=8)
        refusing = NodeRecord("node-b", address="198.18.0.12", healthy=True, refused=(VIP,))
        snapshot = _snapshot(
            vips={VIP: ghost},
            leader=ControllerLeader("ghost-controller", since=NOW),
            nodes={**_snapshot().nodes, "node-b": refusing},
        )
        status = view.status_view(snapshot, {})
        assert [v.state for v in status.vips if v.address == VIP] == ["orphaned"]
        assert status.repairs == (
            "vips/198.18.0.100: its assignment to ghost names a lease ghost does not hold; "
            "the controller reassigns it",
            "controller/leader has no lease; the next controller to campaign replaces it",
            "node-b refuses 198.18.0.100: not in its own allowed_vips",
        )
        table = click.unstyle(view.status_table(status, NOW))
        assert "node-b refuses 198.18.0.100" in table and "controller/leader has no lease" in table
        assert view.status_json(status)["repairs"] == list(status.repairs)

    def test_an_acknowledged_release_shows_as_released(self) -> None:
        a = VipAssignment(VIP, "node-a", epoch=3, since=NOW, lease=11, mod_revision=20)
        base = _snapshot()
        acked = NodeRecord("node-a", healthy=True, lease=11, released={VIP: 20})
        snapshot = _snapshot(vips={VIP: a}, nodes={**base.nodes, "node-a": acked})
        status = view.status_view(snapshot, {})
        assert [v.state for v in status.vips if v.address == VIP] == ["released"]
        assert status.repairs == ()
