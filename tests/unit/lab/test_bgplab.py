"""The BGP lab's shape (pure): the client behind the router, its address, judging spread."""

from __future__ import annotations

import ipaddress

import pytest

from haproxy_py.lab import bgplab, ecmp, nhmirror
from haproxy_py.lab.layout import LayoutError, behind_router, plan


def test_the_client_sits_behind_the_router_in_the_other_half_of_the_lab_range() -> None:
    layout = plan("hb-", "198.18.7.0/24", 4, "bgp", None)
    assert layout.client.address == "198.19.7.41"
    assert layout.vips == ("198.18.7.100",)  # one VIP, announced by every node
    assert bgplab.router_address(layout) == "198.18.7.2"
    assert bgplab.client_gateway(layout) == "198.19.7.1"


def test_behind_router_stays_inside_the_lab_range_from_either_half() -> None:
    lab_range = ipaddress.ip_network("198.18.0.0/15")
    for subnet in ("198.18.250.0/24", "198.19.3.0/24"):
        other = behind_router(ipaddress.IPv4Network(subnet))
        assert other.subnet_of(lab_range)
        assert not other.overlaps(ipaddress.IPv4Network(subnet))


def test_floating_ip_modes_keep_the_client_on_the_bridge() -> None:
    assert plan("hb-", "198.18.7.0/24", 2, "active-standby", None).client.address == "198.18.7.41"


def test_an_unknown_mode_names_the_choices() -> None:
    with pytest.raises(LayoutError, match="active-standby, active-active, bgp"):
        plan("hb-", "198.18.7.0/24", 2, "anycast", None)


def test_spread_is_judged_against_the_mean_of_every_node() -> None:
    nodes = ["node1", "node2", "node3", "node4"]
    even = ecmp.judge({"node1": 1000, "node2": 1000, "node3": 1000, "node4": 1000}, nodes)
    assert (even.mean, even.worst, even.failed) == (1000, 0, 0)
    skewed = ecmp.judge({"node1": 1300, "node2": 900, "node3": 900, ecmp.FAILED: 3}, nodes)
    assert skewed.mean == 775 and skewed.failed == 3
    assert skewed.worst == pytest.approx(1.0)  # node4 answered nothing: 100 % below the mean


def test_the_plain_router_drops_a_graceful_shutdown_path_and_the_resilient_one_weighs_it() -> None:
    """RFC 8326 on the lab router: local preference 0 (out of plain ECMP), or, for the
    resilient groups, the lowest weight (kept in the group, its busy buckets stay)."""
    layout = plan("hb-", "198.18.7.0/24", 4, "bgp", None)
    plain = bgplab.router_config(layout)
    assert "bgp_local_pref = 0" in plain and "weight" not in plain
    resilient = bgplab.router_config(layout, table=nhmirror.TABLE)
    assert f"kernel table {nhmirror.TABLE};" in resilient
    assert "then weight = 1; else weight = 255;" in resilient
    assert "bgp_local_pref" not in resilient


def test_nhmirror_writes_each_gateways_weight_into_the_group() -> None:
    hops = {"198.18.7.21": nhmirror.SERVING, "198.18.7.24": nhmirror.DRAINING}
    assert nhmirror.members(hops) == "1021,255/1024,1"
