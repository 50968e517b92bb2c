"""`hactl status`'s etcd part and `hactl etcd compact|defrag|disarm` against real members.

The NOSPACE case is real: a member with a 4 MiB quota is filled until etcd
raises the alarm and refuses writes, then the operator's three commands make it
writable again.
"""

from __future__ import annotations

import asyncio
import json

import click
from click.testing import CliRunner

from haproxy_py.cluster import maintenance
from haproxy_py.cluster.store import Store, StoreError
from haproxy_py.hactl.cli import cli
from haproxy_py.hactl.errors import EXIT_NOT_FOUND
from haproxy_py.metrics import Registry
from tests.integration.hactl.harness import hactl, with_store
from tests.support.etcd import QUOTA_BYTES, EtcdCluster

CLUSTER = "hh-etcd"


def test_status_shows_every_member_its_role_size_and_lag(etcd_cluster: EtcdCluster) -> None:
    result = hactl(etcd_cluster, CLUSTER, "status")
    assert result.exit_code == 0, result.output
    text = click.unstyle(result.stdout)
    assert "etcd: 3 members, leader m" in text
    assert "quota 256.0 MiB" in text
    rows = {line.split()[0]: line.split() for line in text.splitlines() if line.startswith("m")}
    assert sorted(rows) == ["m0", "m1", "m2"]
    assert sorted(row[2] for row in rows.values()) == ["follower", "follower", "leader"]
    assert all(row[1] in etcd_cluster.endpoints and row[3] == "yes" for row in rows.values())
    assert all(row[-1].isdigit() for row in rows.values())  # raft lag behind the leader

    doc = json.loads(hactl(etcd_cluster, CLUSTER, "status", "-o", "json").stdout)["etcd"]
    assert doc["quota"] == QUOTA_BYTES and doc["alarms"] == [] and doc["warnings"] == []
    assert doc["leader"] in {"m0", "m1", "m2"} and 0 < doc["usage"] < 0.01
    member = doc["members"][0]
    assert set(member) == {
        "name", "endpoint", "role", "reachable", "db_size", "db_in_use",
        "raft_index", "raft_lag", "quota", "error",
    }  # fmt: skip
    assert 0 < member["db_in_use"] <= member["db_size"] and member["raft_index"] > 0


def test_an_unreachable_member_is_a_row_and_a_warning(etcd_cluster: EtcdCluster) -> None:
    etcd_cluster.members[2].kill()
    result = hactl(etcd_cluster, CLUSTER, "status", "-o", "json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)["etcd"]
    down = next(m for m in doc["members"] if m["name"] == "m2")
    assert (down["reachable"], down["role"], down["db_size"]) == (False, None, None)
    assert any(w.startswith("etcd member m2 (") and "unreachable" in w for w in doc["warnings"])
    table = click.unstyle(hactl(etcd_cluster, CLUSTER, "status").stdout)
    assert "warning: etcd member m2" in table


def test_nospace_alarm_is_shown_and_compact_defrag_disarm_clear_it() -> None:
    quota = 4 * 1024 * 1024
    with EtcdCluster.start(size=1, quota_bytes=quota) as etcd:
        key = f"/haproxy-py/{CLUSTER}/filler"

        async def fill(store: Store) -> str:
            for _ in range(200):  # every put keeps the old value as history: the file grows
                try:
                    await store.put(key, b"x" * 256 * 1024)
                except StoreError as exc:
                    return str(exc)
            return "never full"

        assert "database space exceeded" in with_store(etcd, CLUSTER, fill)
        assert 'haproxy_py_controller_etcd_alarm{alarm="NOSPACE",member="m0"} 1' in (
            with_store(etcd, CLUSTER, exported_alarms)
        )
        result = hactl(etcd, CLUSTER, "status")
        assert result.exit_code == 0, result.output
        assert "ALARM NOSPACE on m0: etcd refuses writes" in click.unstyle(result.stdout)
        assert "\x1b[31m" in hactl_colour(etcd, "status")  # the alarm line is red on a terminal
        doc = json.loads(hactl(etcd, CLUSTER, "status", "-o", "json").stdout)["etcd"]
        assert doc["alarms"] == [{"member": "m0", "alarm": "NOSPACE"}]
        assert doc["usage"] >= 0.7
        assert any("of its 4.0 MiB quota on m0" in w for w in doc["warnings"])

        compacted = hactl(etcd, CLUSTER, "etcd", "compact")
        assert (
            compacted.exit_code == 0 and "compacted etcd history up to revision" in compacted.stdout
        )
        defragged = hactl(etcd, CLUSTER, "etcd", "defrag")
        assert defragged.exit_code == 0, defragged.output
        assert defragged.stdout.startswith(f"defragmented m0 ({etcd.endpoints[0]}): ")
        assert hactl(etcd, CLUSTER, "etcd", "disarm").exit_code == 0

        doc = json.loads(hactl(etcd, CLUSTER, "status", "-o", "json").stdout)["etcd"]
        assert doc["alarms"] == [] and doc["usage"] < 0.7
        assert with_store(etcd, CLUSTER, lambda store: store.put(key, b"writable again")) > 0


def test_defrag_one_member_and_unknown_member(etcd_cluster: EtcdCluster) -> None:
    result = hactl(etcd_cluster, CLUSTER, "etcd", "defrag", "--member", "m1")
    assert result.exit_code == 0, result.output
    assert [line.split()[1] for line in result.stdout.splitlines()] == ["m1"]
    result = hactl(etcd_cluster, CLUSTER, "etcd", "defrag", "--member", "m9")
    assert result.exit_code == EXIT_NOT_FOUND
    assert result.stderr == "hactl: no etcd member named 'm9' (members: m0, m1, m2)\n"


async def exported_alarms(store: Store) -> str:
    """What the controller's /metrics says about alarms after its first poll."""
    registry = Registry("haproxy_py_controller")
    exporter = asyncio.create_task(maintenance.export_alarms(store, registry))
    try:
        for _ in range(100):
            await asyncio.sleep(0.05)
            if registry.families["haproxy_py_controller_etcd_alarm"].values:
                break
        return registry.render()
    finally:
        exporter.cancel()


def hactl_colour(etcd: EtcdCluster, *args: str) -> str:
    """stdout as a terminal would get it (CliRunner keeps the colour codes with color=True)."""
    argv = ["--etcd", ",".join(etcd.endpoints), "--etcd-timeout", "5", "--cluster", CLUSTER]
    return CliRunner().invoke(cli, [*argv, *args], color=True).stdout
