"""failover, pause/resume, drain/undrain against a real etcd and the real ha-controller.

Nodes are agent stand-ins (tests/support/stand_in.py): they
register, keep their lease and acknowledge releases, without touching any IP.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import click
import pytest

from haproxy_py.cluster.records import ClusterView
from haproxy_py.hactl.errors import EXIT_OK, EXIT_REFUSED, EXIT_TIMEOUT
from tests.integration.hactl.harness import WAIT, Processes, hactl, read_view
from tests.support.etcd import EtcdCluster
from tests.support.wait import eventually

CLUSTER = "hh-actions"
VIPS = ("198.18.0.100", "198.18.0.101")
MOVE_LINE = re.compile(
    r"^(?P<vip>[\d.]+): (?P<src>[\w-]+) -> (?P<dst>[\w-]+) "
    r"in [\d.]+ ms \(VIP unowned for [\d.]+ ms\)$"
)


def _owners(view: ClusterView) -> dict[str, str | None]:
    return {vip: view.owner(vip) for vip in VIPS}


@pytest.fixture
def cluster(etcd: EtcdCluster, tmp_path: Path) -> Iterator[EtcdCluster]:
    """node-a (priority 150) holds both VIPs; node-b standby; node-c's proxy unhealthy."""
    with Processes() as procs:
        procs.standin(etcd, CLUSTER, "node-a", "--address", "198.18.0.11", "--priority", "150")
        procs.standin(etcd, CLUSTER, "node-b", "--address", "198.18.0.12")
        procs.standin(etcd, CLUSTER, "node-c", "--address", "198.18.0.13", "--unhealthy")
        procs.controller(etcd, CLUSTER, VIPS, tmp_path, "ctl-1")
        eventually(
            lambda: _owners(read_view(etcd, CLUSTER)) == dict.fromkeys(VIPS, "node-a"),
            WAIT,
            "the controller to place both VIPs on node-a",
        )
        yield etcd


class TestFailover:
    def test_move_to_a_node(self, cluster: EtcdCluster) -> None:
        """--to moves every active-standby VIP and prints each move with its timing."""
        result = hactl(cluster, CLUSTER, "failover", "--to", "node-b", "--yes")
        assert result.exit_code == EXIT_OK, result.output
        lines = result.stdout.splitlines()
        assert len(lines) == 2
        for line, vip in zip(sorted(lines), VIPS, strict=True):
            match = MOVE_LINE.match(line)
            assert match, line
            assert (match["vip"], match["src"], match["dst"]) == (vip, "node-a", "node-b")
        assert _owners(read_view(cluster, CLUSTER)) == dict.fromkeys(VIPS, "node-b")

    def test_history_records_the_move(self, cluster: EtcdCluster) -> None:
        assert hactl(cluster, CLUSTER, "failover", "--to", "node-b", "--yes").exit_code == 0
        result = hactl(cluster, CLUSTER, "history", "-o", "json")
        manual = [e for e in json.loads(result.stdout) if e["cause"] == "manual"]
        assert {(e["vip"], e["from"], e["to"]) for e in manual} == {
            (vip, "node-a", "node-b") for vip in VIPS
        }
        assert all(e["gap_ms"] is not None and e["request"] for e in manual)

    def test_default_target_is_the_best_other_node(self, cluster: EtcdCluster) -> None:
        """Without --to the controller picks a healthy node other than the owner."""
        result = hactl(cluster, CLUSTER, "failover", input="y\n")
        assert result.exit_code == EXIT_OK, result.output
        assert "to the best other healthy node? [y/N]" in result.stdout
        assert _owners(read_view(cluster, CLUSTER)) == dict.fromkeys(VIPS, "node-b")

    def test_refused_with_the_controllers_reason(self, cluster: EtcdCluster) -> None:
        """A move to an unhealthy node: exit 1 and the controller's reason, nothing moved."""
        result = hactl(cluster, CLUSTER, "failover", "--to", "node-c", "--yes")
        assert result.exit_code == EXIT_REFUSED
        assert result.stderr.startswith("hactl: the controller refused the move request: ")
        assert "node-c" in result.stderr
        assert result.stderr.count("\n") == 1
        assert _owners(read_view(cluster, CLUSTER)) == dict.fromkeys(VIPS, "node-a")


class TestMaintenance:
    def test_pause_and_resume_show_in_status(self, cluster: EtcdCluster) -> None:
        result = hactl(cluster, CLUSTER, "pause")
        assert result.exit_code == EXIT_OK, result.output
        assert "Maintenance mode on" in result.stdout
        status = hactl(cluster, CLUSTER, "status")
        assert "Maintenance mode: on" in click.unstyle(status.stdout)
        assert json.loads(hactl(cluster, CLUSTER, "status", "-o", "json").stdout)["paused"]

        again = hactl(cluster, CLUSTER, "pause")
        assert again.exit_code == EXIT_OK
        assert "Maintenance mode on" in again.stdout

        result = hactl(cluster, CLUSTER, "resume")
        assert result.exit_code == EXIT_OK, result.output
        assert "Maintenance mode off" in result.stdout
        assert not json.loads(hactl(cluster, CLUSTER, "status", "-o", "json").stdout)["paused"]

    def test_manual_failover_works_while_paused(self, cluster: EtcdCluster) -> None:
        assert hactl(cluster, CLUSTER, "pause").exit_code == EXIT_OK
        result = hactl(cluster, CLUSTER, "failover", "--to", "node-b", "--yes")
        assert result.exit_code == EXIT_OK, result.output
        assert _owners(read_view(cluster, CLUSTER)) == dict.fromkeys(VIPS, "node-b")


class TestDrain:
    def test_drain_moves_vips_away_and_undrain_brings_the_node_back(
        self, cluster: EtcdCluster
    ) -> None:
        result = hactl(cluster, CLUSTER, "drain", "node-a", "--yes")
        assert result.exit_code == EXIT_OK, result.output
        assert "node-a drained" in result.stdout
        assert _owners(read_view(cluster, CLUSTER)) == dict.fromkeys(VIPS, "node-b")
        nodes = {
            n["name"]: n
            for n in json.loads(hactl(cluster, CLUSTER, "status", "-o", "json").stdout)["nodes"]
        }
        assert nodes["node-a"]["role"] == "draining"
        assert nodes["node-b"]["role"] == "active"

        assert "already drained" in hactl(cluster, CLUSTER, "drain", "node-a").stdout

        result = hactl(cluster, CLUSTER, "undrain", "node-a")
        assert result.exit_code == EXIT_OK, result.output
        assert "node-a is back in service" in result.stdout
        nodes = {
            n["name"]: n
            for n in json.loads(hactl(cluster, CLUSTER, "status", "-o", "json").stdout)["nodes"]
        }
        assert nodes["node-a"]["role"] in {"standby", "active"}

    def test_drain_refused_when_nobody_can_take_over(self, cluster: EtcdCluster) -> None:
        """With node-b drained too, node-a's VIPs have nowhere to go: refused, exit 1."""
        assert hactl(cluster, CLUSTER, "drain", "node-b", "--yes").exit_code == EXIT_OK
        result = hactl(cluster, CLUSTER, "drain", "node-a", "--yes")
        assert result.exit_code == EXIT_REFUSED
        assert "the controller refused the drain request: no other healthy" in result.stderr
        assert _owners(read_view(cluster, CLUSTER)) == dict.fromkeys(VIPS, "node-a")

    def test_undrain_of_a_node_that_is_not_drained(self, cluster: EtcdCluster) -> None:
        result = hactl(cluster, CLUSTER, "undrain", "node-b")
        assert result.exit_code == EXIT_OK
        assert "node-b is not drained" in result.stdout


def test_timeout_while_the_move_runs(etcd: EtcdCluster, tmp_path: Path) -> None:
    """An owner that never releases: hactl gives up after --timeout (exit 6) and says the
    controller carries on with the request."""
    with Processes() as procs:
        procs.standin(etcd, CLUSTER, "node-a", "--priority", "150", "--no-ack")
        procs.standin(etcd, CLUSTER, "node-b")
        procs.controller(etcd, CLUSTER, VIPS, tmp_path, "ctl-1")
        eventually(
            lambda: _owners(read_view(etcd, CLUSTER)) == dict.fromkeys(VIPS, "node-a"),
            WAIT,
            "the controller to place both VIPs on node-a",
        )
        result = hactl(etcd, CLUSTER, "failover", "--to", "node-b", "--yes", "--timeout", "1")
        assert result.exit_code == EXIT_TIMEOUT, result.output
        assert "still running after 1 s" in result.stderr
        assert "the controller carries on with it" in result.stderr
