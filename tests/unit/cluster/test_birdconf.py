"""BIRD configs for BGP mode: what the node and the lab router get, checked by BIRD's own parser."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from haproxy_py.cluster import birdconf
from haproxy_py.cluster.birdconf import Bfd, BirdConfigError, NodeBgp, Peer
from haproxy_py.lab import bgplab
from haproxy_py.lab.layout import plan


def settings(tmp_path: Path, **changes: object) -> NodeBgp:
    base = NodeBgp(
        asn=64513,
        router_id="198.18.5.21",
        address="198.18.5.21",
        interface="eth0",
        peers=(Peer("uplink", "198.18.5.2", 64512), Peer("uplink2", "198.18.5.3", 64512)),
        live_link="havips",
        announce_file=str(tmp_path / "announce.conf"),
    )
    return NodeBgp(**{**base.__dict__, **changes})


def bird_parses(path: Path, text: str) -> subprocess.CompletedProcess[str]:
    path.write_text(text)
    return subprocess.run(["bird", "-p", "-c", str(path)], capture_output=True, text=True)


def test_a_node_config_with_its_announce_file_is_accepted_by_bird(tmp_path: Path) -> None:
    s = settings(tmp_path)
    vips = ["198.18.5.101", "198.18.5.100"]
    Path(s.announce_file).write_text(birdconf.announce_file(vips, "havips"))
    done = bird_parses(tmp_path / "bird.conf", birdconf.node_config(s))
    assert done.returncode == 0, done.stderr
    # with a VIP leaving under RFC 8326's community
    Path(s.announce_file).write_text(birdconf.announce_file(vips[:1], "havips", vips[1:]))
    done = bird_parses(tmp_path / "bird.conf", birdconf.node_config(s))
    assert done.returncode == 0, done.stderr


def test_the_node_exports_its_static_vip_routes_with_bfd_to_every_peer(tmp_path: Path) -> None:
    text = birdconf.node_config(settings(tmp_path))
    assert text.count("bfd on;") == 2
    assert text.count('export where proto = "vips";') == 2
    assert "check link;" in text
    assert "interval 100 ms; multiplier 3;" in text


def test_without_bfd_there_is_no_bfd_protocol(tmp_path: Path) -> None:
    text = birdconf.node_config(settings(tmp_path, bfd=None))
    assert "protocol bfd" not in text and "bfd on" not in text
    Path(tmp_path / "announce.conf").write_text("")
    assert bird_parses(tmp_path / "bird.conf", text).returncode == 0


def test_the_announce_file_is_sorted_and_has_each_vip_once() -> None:
    text = birdconf.announce_file(["198.18.5.101", "198.18.5.100", "198.18.5.101"], "havips")
    routes = [line for line in text.splitlines() if line.startswith("route")]
    assert routes == [
        'route 198.18.5.100/32 via "havips";',
        'route 198.18.5.101/32 via "havips";',
    ]


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"asn": 0}, "asn"),
        ({"router_id": "node1"}, "router_id"),
        ({"peers": ()}, "peers"),
        ({"peers": (Peer("1up", "198.18.5.2", 64512),)}, "peers.1up"),
        ({"peers": (Peer("up", "198.18.5.300", 64512),)}, "peers.up.address"),
        ({"live_link": "a-very-long-interface"}, "live_link"),
        ({"bfd": Bfd(interval_ms=1)}, "bfd"),
        ({"hold_time": 1}, "hold_time"),
    ],
)
def test_bad_settings_are_refused_naming_the_setting(
    tmp_path: Path, change: dict[str, object], named: str
) -> None:
    with pytest.raises(BirdConfigError, match=f"^{named}"):
        birdconf.node_config(settings(tmp_path, **change))


def test_a_vip_that_is_not_an_address_is_refused() -> None:
    with pytest.raises(BirdConfigError, match="vip: an IPv4 address"):
        birdconf.announce_file(["198.18.5.1/32"], "havips")


def test_the_lab_router_config_is_accepted_by_bird(tmp_path: Path) -> None:
    layout = plan("hbg-", "198.18.5.0/24", 4, "bgp", None)
    text = bgplab.router_config(layout)
    assert text.count("bfd on;") == 4
    assert "merge paths on" in text
    done = bird_parses(tmp_path / "router.conf", text)
    assert done.returncode == 0, done.stderr
