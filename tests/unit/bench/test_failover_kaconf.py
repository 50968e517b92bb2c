"""keepalived configuration of the two comparison profiles, and the partition's neighbour pins."""

from __future__ import annotations

from bench.failover.cut import End, pairs
from bench.failover.kaconf import PROFILES, Peer, base_priority, notify_script, render


def config(profile: str) -> str:
    me, peer = Peer("node1", "198.18.0.21", base_priority(0)), Peer("node2", "198.18.0.22", 100)
    return render(
        PROFILES[profile], me, [peer], "198.18.0.100", "http://127.0.0.1:9901/healthz", "/n.sh"
    )


def lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines()]


def test_nginx_profile_follows_the_documented_ha_pair() -> None:
    text = lines(config("nginx"))
    for expected in (
        "priority 101",
        "advert_int 1",
        "weight 50",
        "interval 1",
        "accept",
        "unicast_src_ip 198.18.0.21",
        "198.18.0.22",
        "198.18.0.100",
        "chk_proxy",
        'notify "/n.sh"',
    ):
        assert expected in text, expected
    assert 'script "/usr/bin/curl -sf -m 1 -o /dev/null http://127.0.0.1:9901/healthz"' in text
    assert "198.18.0.21" not in text[text.index("unicast_peer {") :]


def test_fast_profile_is_vrrp3_with_a_10_ms_advert() -> None:
    text = lines(config("fast"))
    assert "vrrp_version 3" in text and "advert_int 0.01" in text


def test_priorities_stagger_from_101() -> None:
    assert [base_priority(i) for i in range(3)] == [101, 100, 99]


def test_notify_script_keeps_the_state_argument() -> None:
    script = notify_script("/run/x/node1.state")
    assert script.startswith("#!/bin/sh")
    assert 'echo "$3" > "/run/x/node1.state.tmp"' in script


def test_partition_pins_both_directions_for_every_peer() -> None:
    node = End("hb-node1", "198.18.0.21/24")
    peers = [End("hb-etcd1", "198.18.0.11/24"), End("hb-node2", "198.18.0.22/24")]
    assert pairs(node, peers) == [
        ("hb-node1", "198.18.0.11"),
        ("hb-etcd1", "198.18.0.21"),
        ("hb-node1", "198.18.0.22"),
        ("hb-node2", "198.18.0.21"),
    ]
