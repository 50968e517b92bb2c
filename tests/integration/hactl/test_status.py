"""status, history and the read-side errors against a real etcd with registered nodes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from haproxy_py.cluster.records import ClusterPolicy, Event
from haproxy_py.hactl.cli import cli
from haproxy_py.hactl.errors import (
    EXIT_NO_LEADER,
    EXIT_NOT_FOUND,
    EXIT_TIMEOUT,
    EXIT_UNREACHABLE,
)
from tests.integration.hactl.harness import Processes, hactl, read_view, seed_controller_keys
from tests.support.etcd import EtcdCluster

CLUSTER = "hh-status"
VIP_A, VIP_B = "198.18.0.100", "198.18.0.101"


@pytest.fixture
def cluster(etcd: EtcdCluster) -> Iterator[EtcdCluster]:
    """Three registered nodes (node-c's proxy unhealthy), a leader key, node-a holding VIP_A."""
    with Processes() as procs:
        procs.standin(etcd, CLUSTER, "node-a", "--address", "198.18.0.11", "--priority", "150")
        procs.standin(etcd, CLUSTER, "node-b", "--address", "198.18.0.12")
        procs.standin(etcd, CLUSTER, "node-c", "--address", "198.18.0.13", "--unhealthy")
        now = time.time()
        seed_controller_keys(
            etcd,
            CLUSTER,
            settings=ClusterPolicy(vips=(VIP_A, VIP_B)),
            leader="ctl-test",
            owners={VIP_A: "node-a"},
            events=[
                Event(1, now - 30, VIP_A, None, "node-b", "initial"),
                Event(2, now - 20, VIP_A, "node-b", "node-a", "manual", gap_ms=41.0),
            ],
        )
        yield etcd


class TestStatus:
    def test_table(self, cluster: EtcdCluster) -> None:
        """Header, one row per node with role/health/VIPs/lease, one row per VIP."""
        result = hactl(cluster, CLUSTER, "status")
        assert result.exit_code == 0, result.output
        lines = click.unstyle(result.stdout).splitlines()
        assert lines[0].startswith(
            f"Cluster: {CLUSTER}  mode: active-standby  controller: ctl-test"
        )
        rows = {line.split()[0]: line.split() for line in lines if line.startswith("node-")}
        assert rows["node-a"][:6] == ["node-a", "198.18.0.11", "active", "healthy", VIP_A, "1/2"]
        assert rows["node-a"][8] == "150"
        assert float(rows["node-a"][7].rstrip("s")) > 0  # lease time left, from etcd
        assert rows["node-b"][2:5] == ["standby", "healthy", "-"]
        assert rows["node-c"][2:4] == ["down", "unhealthy"]
        vips = {line.split()[0]: line.split() for line in lines if line.startswith("198.18.0.1")}
        assert vips[VIP_A][1:3] == ["node-a", "assigned"]
        assert vips[VIP_B][1:3] == ["-", "unassigned"]
        assert result.stderr == ""

    def test_json(self, cluster: EtcdCluster) -> None:
        """-o json carries the documented keys."""
        result = hactl(cluster, CLUSTER, "status", "-o", "json")
        assert result.exit_code == 0, result.output
        doc = json.loads(result.stdout)
        assert {k: doc[k] for k in ("cluster", "mode", "paused", "epoch", "controller")} == {
            "cluster": CLUSTER,
            "mode": "active-standby",
            "paused": False,
            "epoch": 2,
            "controller": "ctl-test",
        }
        nodes = {n["name"]: n for n in doc["nodes"]}
        assert nodes["node-a"]["role"] == "active"
        assert nodes["node-a"]["healthy"] is True
        assert nodes["node-a"]["vips"] == [VIP_A]
        assert nodes["node-a"]["address"] == "198.18.0.11"
        assert 0 < nodes["node-a"]["lease_left"] <= 10
        assert nodes["node-c"]["healthy"] is False
        assert [(v["address"], v["owner"]) for v in doc["vips"]] == [
            (VIP_A, "node-a"),
            (VIP_B, None),
        ]

    def test_watch_is_bounded_and_follows_changes(self, cluster: EtcdCluster) -> None:
        """--watch with --count prints that many JSON documents, one per line."""
        result = hactl(cluster, CLUSTER, "status", "-o", "json", "--watch", "0.2", "--count", "3")
        assert result.exit_code == 0, result.output
        docs = [json.loads(line) for line in result.stdout.splitlines()]
        assert len(docs) == 3
        assert all(d["cluster"] == CLUSTER for d in docs)

    def test_watch_without_seconds(self, cluster: EtcdCluster) -> None:
        """A bare --watch refreshes every 2 s."""
        result = hactl(cluster, CLUSTER, "status", "--watch", "--count", "1")
        assert result.exit_code == 0, result.output
        assert "Every 2s: hactl status" in result.stdout

    def test_watch_table(self, cluster: EtcdCluster) -> None:
        result = hactl(cluster, CLUSTER, "status", "--watch", "0.2", "--count", "2")
        assert result.exit_code == 0, result.output
        assert result.stdout.count("Every 0.2s: hactl status") == 2
        assert result.stdout.count(f"Cluster: {CLUSTER}") == 2

    def test_unknown_cluster_warns(self, cluster: EtcdCluster) -> None:
        """A cluster name with nothing stored is called out on stderr (exit 0: it is a view)."""
        result = hactl(cluster, "hh-nothing", "status")
        assert result.exit_code == 0
        assert "nothing stored for cluster 'hh-nothing'" in result.stderr


class TestHistory:
    def test_table_newest_last(self, cluster: EtcdCluster) -> None:
        result = hactl(cluster, CLUSTER, "history")
        assert result.exit_code == 0, result.output
        lines = result.stdout.splitlines()
        assert lines[0].split() == ["EPOCH", "TIME", "VIP", "FROM", "TO", "CAUSE", "GAP"]
        assert lines[2].split()[2:] == [VIP_A, "node-b", "node-a", "manual", "41", "ms"]

    def test_json_limited(self, cluster: EtcdCluster) -> None:
        result = hactl(cluster, CLUSTER, "history", "-n", "1", "-o", "json")
        assert result.exit_code == 0, result.output
        (event,) = json.loads(result.stdout)
        assert (event["seq"], event["from"], event["to"], event["cause"], event["gap_ms"]) == (
            2,
            "node-b",
            "node-a",
            "manual",
            41.0,
        )


class TestErrors:
    def test_etcd_unreachable(self, etcd: EtcdCluster) -> None:
        """A stopped etcd: one line naming the endpoints and the timeout, exit 4."""
        endpoint = etcd.endpoints[0]
        etcd.members[0].stop()
        result = hactl(etcd, CLUSTER, "status")
        assert result.exit_code == EXIT_UNREACHABLE
        assert result.stderr.startswith(
            f"hactl: etcd unreachable (endpoints {endpoint}; timeout 5 s)"
        )
        assert result.stderr.count("\n") == 1

    def test_requests_without_leader(self, etcd: EtcdCluster) -> None:
        """No controller leader: each request says why it cannot run, and writes nothing."""
        with Processes() as procs:
            procs.standin(etcd, CLUSTER, "node-a")
            for command in (["failover", "--yes"], ["pause"], ["resume"], ["drain", "node-a"]):
                result = hactl(etcd, CLUSTER, *command)
                assert result.exit_code == EXIT_NO_LEADER, command
                assert result.stderr.startswith(
                    f"hactl: no controller leader in cluster '{CLUSTER}': {command[0]} needs"
                )
            assert read_view(etcd, CLUSTER).requests == ()

    def test_unknown_node(self, cluster: EtcdCluster) -> None:
        result = hactl(cluster, CLUSTER, "drain", "node-x", "--yes")
        assert result.exit_code == EXIT_NOT_FOUND
        assert result.stderr == "hactl: unknown node 'node-x' (known: node-a, node-b, node-c)\n"

    def test_unknown_target(self, cluster: EtcdCluster) -> None:
        result = hactl(cluster, CLUSTER, "failover", "--to", "node-x", "--yes")
        assert result.exit_code == EXIT_NOT_FOUND
        assert "known: node-a, node-b, node-c" in result.stderr

    def test_timeout_withdraws_the_request(self, cluster: EtcdCluster) -> None:
        """A leader key with no controller behind it: timeout, exit 6, request withdrawn."""
        result = hactl(cluster, CLUSTER, "failover", "--to", "node-b", "--yes", "--timeout", "1")
        assert result.exit_code == EXIT_TIMEOUT, result.output
        assert "within 1 s; request withdrawn" in result.stderr
        assert read_view(cluster, CLUSTER).requests == ()

    def test_declined_prompt_changes_nothing(self, cluster: EtcdCluster) -> None:
        result = hactl(cluster, CLUSTER, "failover", "--vip", VIP_A, "--to", "node-b", input="n\n")
        assert result.exit_code == 1
        assert f"Move {VIP_A} (now on node-a), {VIP_B} (now on nobody) to node-b?" in result.stdout
        assert "aborted: nothing was changed" in result.stderr
        assert read_view(cluster, CLUSTER).requests == ()


def test_console_script_end_to_end(cluster: EtcdCluster, tmp_path: Path) -> None:
    """The installed `hactl` script, as an operator runs it, configured from the environment.

    The first endpoint is dead: the store's switch to the next one is logged, on
    stderr, never into the JSON on stdout.
    """
    empty_context = tmp_path / "context.toml"
    empty_context.write_text("")
    script = os.path.join(os.path.dirname(sys.executable), "hactl")
    env = {
        **os.environ,
        "HACTL_ETCD": ",".join(["127.0.0.1:1", *cluster.endpoints]),
        "HACTL_CLUSTER": CLUSTER,
        "HACTL_CONTEXT": str(empty_context),
    }
    env.pop("HACTL_CONFIG", None)
    done = subprocess.run(
        [script, "status", "-o", "json"], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["controller"] == "ctl-test"
    failed = subprocess.run(
        [script, "--etcd", "127.0.0.1:1", "status"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert failed.returncode == EXIT_UNREACHABLE
    assert failed.stderr.startswith("hactl: etcd unreachable")
    assert "Traceback" not in failed.stderr


def _complete(etcd: EtcdCluster, words: str) -> list[str]:
    line = f"hactl --etcd {etcd.endpoints[0]} --cluster {CLUSTER} {words}"
    env = {
        "_HACTL_COMPLETE": "bash_complete",
        "COMP_WORDS": line,
        "COMP_CWORD": str(len(line.split()) - (0 if line.endswith(" ") else 1)),
    }
    result = CliRunner().invoke(cli, [], env=env, prog_name="hactl")
    return [item.split(",", 1)[1] for item in result.stdout.split()]


def test_shell_completion_of_nodes_and_vips(cluster: EtcdCluster) -> None:
    """NODE arguments and --to/--vip complete from what etcd holds."""
    assert _complete(cluster, "drain node-") == ["node-a", "node-b", "node-c"]
    assert _complete(cluster, "failover --to node-b") == ["node-b"]
    assert _complete(cluster, "failover --vip 198.18.0.10") == [VIP_A, VIP_B]


def test_shell_completion_without_etcd_completes_nothing(etcd: EtcdCluster) -> None:
    etcd.members[0].stop()
    assert _complete(etcd, "drain node-") == []
