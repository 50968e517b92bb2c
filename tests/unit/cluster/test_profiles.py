"""Timing profiles: each passes the load-time rules, and the lab and Ansible set its numbers."""

from __future__ import annotations

import json
import tomllib
from dataclasses import replace
from pathlib import Path
from typing import Any

import jinja2
import pytest
import yaml

from haproxy_py.cluster.timing import PROFILES, Profile, etcd_min_ttl, problems
from haproxy_py.lab import layout as lay

ROLES = Path(__file__).resolve().parents[3] / "ansible" / "roles"


@pytest.mark.parametrize("name", list(PROFILES))
def test_every_profile_passes_the_rules_it_is_checked_against_at_load(name: str) -> None:
    profile = PROFILES[name]
    assert profile.problems() == []
    assert etcd_min_ttl(profile.etcd_election_timeout, profile.etcd_heartbeat_interval) <= (
        profile.lease_ttl
    )


def test_the_fast_profile_in_numbers() -> None:
    fast = PROFILES["fast"].timing()
    assert (fast.lease_ttl, fast.keepalive_interval, fast.keepalive_timeout) == (1, 0.125, 0.25)
    assert fast.address_lifetime == 0.5
    assert PROFILES["fast"].etcd_election_timeout == 0.5


def test_a_broken_combination_is_refused_with_its_numbers() -> None:
    on_default_etcd = Profile("x", 1, 0.1, 1.0, 0.5)
    assert any("below etcd's minimum lease TTL (2 s" in p for p in on_default_etcd.problems())
    slow_calls = Profile("y", 1, 0.05, 0.5, 1.0)
    assert slow_calls.problems() == [
        "controller keepalive (0.25) + etcd timeout (1) exceeds the controller's lease_ttl (1 s)"
    ]


@pytest.mark.parametrize("name", list(PROFILES))
def test_the_lab_writes_the_profile_into_every_node_and_runs_etcd_to_allow_it(
    name: str, tmp_path: Path
) -> None:
    layout = lay.plan("t", "198.18.0.0/24", 2, "active-standby", None, name)
    doc = tomllib.loads(lay.node_config(layout, layout.nodes[0], tmp_path, 200))
    profile = PROFILES[name]
    assert doc["agent"]["lease_ttl"] == doc["controller"]["lease_ttl"] == profile.lease_ttl
    assert doc["etcd"]["timeout"] == profile.etcd_timeout
    argv = lay.etcd_command(layout, layout.etcd[0], tmp_path, tmp_path)
    flags = dict(a[2:].split("=", 1) for a in argv if a.startswith("--") and "=" in a)
    election, heartbeat = (
        doc["agent"]["etcd_election_timeout"],
        doc["agent"]["etcd_heartbeat_interval"],
    )
    assert election == int(flags["election-timeout"]) / 1000
    assert heartbeat == int(flags["heartbeat-interval"]) / 1000
    on_lab_etcd = replace(
        profile.timing(), etcd_election_timeout=election, etcd_heartbeat_interval=heartbeat
    )
    assert problems(on_lab_etcd) == []


def test_an_unknown_lab_profile_is_refused() -> None:
    with pytest.raises(lay.LayoutError, match="--profile must be one of default, fast"):
        lay.plan("t", "198.18.0.0/24", 2, "active-standby", None, "turbo")


def _defaults(role: str) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROLES / role / "defaults" / "main.yml").read_text())
    return data


@pytest.mark.parametrize("name", list(PROFILES))
def test_the_ansible_roles_set_the_same_numbers_in_etcd_and_the_nodes(name: str) -> None:
    profile = PROFILES[name]
    etcd = _defaults("etcd")["etcd_timings"][name]
    assert etcd == {
        "heartbeat_interval": round(profile.etcd_heartbeat_interval * 1000),
        "election_timeout": round(profile.etcd_election_timeout * 1000),
    }
    node = _defaults("haproxy_py")["haproxy_py_timings"][name]
    assert node == {
        "lease_ttl": profile.lease_ttl,
        "etcd_timeout": profile.etcd_timeout,
        "etcd_heartbeat_interval": profile.etcd_heartbeat_interval,
        "etcd_election_timeout": profile.etcd_election_timeout,
        "lapse": profile.lapse,
    }


def _render_node(timing: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """node.toml.j2 as the template module renders it, for one host of a one-member etcd."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(ROLES / "haproxy_py" / "templates"),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
    )
    env.filters.update(to_json=json.dumps, bool=bool, combine=lambda a, b: {**a, **b})
    text = env.get_template("node.toml.j2").render(
        ansible_managed="Ansible managed",
        groups={"etcd": ["e1"]},
        hostvars={"e1": {"node_address": "198.18.0.11"}},
        haproxy_py_etcd_group="etcd",
        haproxy_py_etcd_client_port=2379,
        haproxy_py_node_name="n1",
        haproxy_py_node_address="198.18.0.21",
        haproxy_py_node_interface="eth0",
        haproxy_py_node_priority=100,
        haproxy_py_admin_bind="127.0.0.1:9901",
        haproxy_py_extra=extra,
        haproxy_py_listeners=[],
        haproxy_py_cluster_vips=["198.18.0.100"],
        haproxy_py_allowed_vips=["198.18.0.100"],
        haproxy_py_listen_port=80,
        haproxy_py_routes=[],
        haproxy_py_backends={},
        haproxy_py_cluster_name="c",
        haproxy_py_cluster_mode="active-standby",
        haproxy_py_bgp=False,
        haproxy_py_cluster_failback=False,
        haproxy_py_cluster_failback_hold=30,
        haproxy_py_pki_dir="/etc/haproxy-py/pki",
        haproxy_py_lease_ttl=timing["lease_ttl"],
        haproxy_py_timing=timing,
        haproxy_py_log_level="info",
        haproxy_py_proxy_workers="auto",
    )
    return tomllib.loads(text)


@pytest.mark.parametrize("name", list(PROFILES))
def test_the_node_config_ansible_writes_carries_the_profile(name: str) -> None:
    timing = _defaults("haproxy_py")["haproxy_py_timings"][name]
    doc = _render_node(timing, {})
    assert doc["agent"]["lease_ttl"] == doc["controller"]["lease_ttl"] == timing["lease_ttl"]
    assert doc["agent"]["etcd_election_timeout"] == timing["etcd_election_timeout"]
    assert doc["agent"]["lapse"] is doc["controller"]["lapse"] is timing["lapse"]
    assert doc["etcd"]["timeout"] == timing["etcd_timeout"]
    assert doc["agent"]["allowed_vips"] == ["198.18.0.100"]
    overridden = _render_node(timing, {"etcd": {"timeout": 0.4}, "controller": {"tick": 0.5}})
    assert overridden["etcd"]["timeout"] == 0.4
    assert overridden["controller"] == {
        "lease_ttl": timing["lease_ttl"],
        "lapse": timing["lapse"],
        "tick": 0.5,
    }
