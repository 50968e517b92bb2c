"""The etcd part of `hactl status` from members' answers: roles, lag, alarms, quota warning."""

from __future__ import annotations

import click

from haproxy_py.cluster.etcdmembers import Alarm, ClusterStatus, Member, MemberStatus
from haproxy_py.hactl.etcdview import etcd_json, etcd_table, etcd_view, size

MIB = 1024 * 1024


def member(name: str, *, leader: bool = False, raft: int = 100, db: int = 10 * MIB) -> MemberStatus:
    m = Member(hash(name) & 0xFFFF, name, f"198.18.0.{name[-1]}:2379", None)
    return MemberStatus(m, True, leader, "3.4.23", db, db // 2, raft, 100 * MIB)


def down(name: str) -> MemberStatus:
    m = Member(hash(name) & 0xFFFF, name, f"198.18.0.{name[-1]}:2379", None)
    return MemberStatus(m, False, False, error="failed to connect: Connection refused")


def test_roles_and_lag_behind_the_leader() -> None:
    view = etcd_view(
        ClusterStatus((member("e2", raft=90), member("e1", leader=True), down("e3")), ())
    )
    assert [(m.name, m.role, m.raft_lag) for m in view.members] == [
        ("e1", "leader", 0),
        ("e2", "follower", 10),
        ("e3", None, None),
    ]
    assert view.leader == "e1"
    assert view.warnings == ("etcd member e3 (198.18.0.3:2379) unreachable: Connection refused",)


def test_quota_warning_from_seventy_percent_names_the_fullest_member() -> None:
    below = etcd_view(ClusterStatus((member("e1", leader=True, db=69 * MIB),), ()))
    assert below.warnings == () and below.usage == 0.69
    above = etcd_view(
        ClusterStatus((member("e1", leader=True, db=20 * MIB), member("e2", db=71 * MIB)), ())
    )
    assert len(above.warnings) == 1
    assert above.warnings[0].startswith("etcd database at 71% of its 100.0 MiB quota on e2")
    assert "hactl etcd compact" in above.warnings[0]


def test_no_leader_is_a_warning() -> None:
    view = etcd_view(ClusterStatus((member("e1"), member("e2")), ()))
    assert view.leader is None
    assert view.warnings[0].startswith("etcd has no leader")
    assert all(m.raft_lag is None for m in view.members)


def test_alarms_in_red_and_in_json() -> None:
    view = etcd_view(ClusterStatus((member("e1", leader=True),), (Alarm("e1", "NOSPACE"),)))
    table = etcd_table(view)
    alarm_line = next(line for line in table.splitlines() if "ALARM" in line)
    assert click.style("x", fg="red", bold=True).split("x")[0] in alarm_line
    assert click.unstyle(alarm_line).startswith("ALARM NOSPACE on e1: etcd refuses writes")
    doc = etcd_json(view)
    assert doc["alarms"] == [{"member": "e1", "alarm": "NOSPACE"}]
    assert doc["members"][0]["role"] == "leader" and doc["quota"] == 100 * MIB


def test_sizes_for_people() -> None:
    assert [size(v) for v in (None, 512, 20480, 3 * MIB // 2, 2 * 1024 * MIB)] == [
        "-",
        "512 B",
        "20 KiB",
        "1.5 MiB",
        "2.0 GiB",
    ]
