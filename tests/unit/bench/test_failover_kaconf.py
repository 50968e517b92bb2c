"""keepalived configuration of the two comparison profiles, and the partition's neighbour pins."""

from __future__ import annotations

from bench.failover.cut import End, pairs
from bench.failover.kaconf import PROFILES, LogStatus, Peer, base_priority, log_status, render


def config(profile: str) -> str:
    me, peer = Peer("node1", "198.18.0.21", base_priority(0)), Peer("node2", "198.18.0.22", 100)
    return render(PROFILES[profile], me, [peer], "198.18.0.100", "http://127.0.0.1:9901/healthz")


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
    ):
        assert expected in text, expected
    assert 'script "/usr/bin/curl -sf -m 1 -o /dev/null http://127.0.0.1:9901/healthz"' in text
    assert "198.18.0.21" not in text[text.index("unicast_peer {") :]


def test_fast_profile_is_vrrp3_with_a_10_ms_advert() -> None:
    text = lines(config("fast"))
    assert "vrrp_version 3" in text and "advert_int 0.01" in text


def test_priorities_stagger_from_101() -> None:
    assert [base_priority(i) for i in range(3)] == [101, 100, 99]


LOG = """Wed Nov 25 19:51:12 2026: Starting Keepalived v2.2.7 (01/16,2022)
Wed Nov 25 19:51:12 2026: (VI_1) Entering BACKUP STATE (init)
Wed Nov 25 19:51:12 2026: VRRP_Script(chk_proxy) succeeded
Wed Nov 25 19:51:12 2026: (VI_1) Entering MASTER STATE
Wed Nov 25 19:51:12 2026: Sending gratuitous ARP on eth0 for 198.18.200.100
""".splitlines()


def test_log_status_is_the_latest_state_and_check() -> None:
    assert log_status(LOG) == LogStatus("MASTER", True)
    failed = [*LOG, "x: VRRP_Script(chk_proxy) failed (exited with status 7)"]
    assert log_status(failed) == LogStatus("MASTER", False)
    reloaded = [*failed, "x: VRRP_Script(chk_proxy) considered successful on reload"]
    assert log_status(reloaded) == LogStatus("MASTER", True)


def test_log_status_forgets_an_earlier_run() -> None:
    restarted = [*LOG, "x: Starting Keepalived v2.2.7", "x: (VI_1) Entering BACKUP STATE (init)"]
    assert log_status(restarted) == LogStatus("BACKUP", False)
    assert log_status([]) == LogStatus("", False)


def test_partition_pins_both_directions_for_every_peer() -> None:
    node = End("hb-node1", "198.18.0.21/24")
    peers = [End("hb-etcd1", "198.18.0.11/24"), End("hb-node2", "198.18.0.22/24")]
    assert pairs(node, peers) == [
        ("hb-node1", "198.18.0.11"),
        ("hb-etcd1", "198.18.0.21"),
        ("hb-node1", "198.18.0.22"),
        ("hb-node2", "198.18.0.21"),
    ]
