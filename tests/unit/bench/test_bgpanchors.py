"""The anchors' bench (pure parts): their configs, the router left at their defaults, the
drain's WebSocket count and the side-by-side report."""

from __future__ import annotations

from bench import anchorconf, bgpanchors
from haproxy_py.lab import bgplab
from haproxy_py.lab.layout import plan


def test_the_router_for_the_anchors_has_no_bfd_and_bird_s_default_hold_time() -> None:
    text = bgplab.router_config(plan("hax-", "198.18.5.0/24", 4, "bgp", None), hold=None, bfd=False)
    assert "bfd" not in text and "hold time" not in text
    assert "merge paths on" in text  # the multipath is the lab's, unchanged
    assert text.count("protocol bgp node") == 4


def test_the_lab_router_keeps_its_own_hold_time_and_bfd_by_default() -> None:
    text = bgplab.router_config(plan("hax-", "198.18.5.0/24", 4, "bgp", None))
    assert text.count("hold time 9;") == 4 and text.count("bfd on;") == 4


def test_exabgp_runs_its_healthcheck_with_its_defaults_and_no_hold_time() -> None:
    text = anchorconf.exabgp_config(
        node="198.18.5.21",
        router="198.18.5.2",
        local_asn=64513,
        peer_asn=64512,
        vip="198.18.5.100",
        disable="/run/x/node1-drain",
    )
    run = next(line for line in text.splitlines() if line.strip().startswith("run "))
    assert "-m exabgp healthcheck" in run
    assert "--ip 198.18.5.100/32" in run and "--disable /run/x/node1-drain" in run
    assert (
        'curl --fail --silent --output /dev/null --max-time 2 http://127.0.0.1:8080/whoami"' in run
    )
    for changed in ("--interval", "--rise", "--fall", "--withdraw-on-down", "hold-time"):
        assert changed not in text
    assert "local-as 64513;" in text and "peer-as 64512;" in text
    assert "processes [ healthcheck ];" in text


def test_frr_gets_metallb_s_timers_and_no_bfd_and_announces_nothing_until_ready() -> None:
    text = anchorconf.frr_config(
        hostname="node1", node="198.18.5.21", router="198.18.5.2", local_asn=64513, peer_asn=64512
    )
    assert "neighbor 198.18.5.2 timers 30 90" in text
    assert "bfd" not in text and "network" not in text.replace("network import-check", "")
    assert "neighbor 198.18.5.2 activate" in text
    assert "bgp graceful-restart preserve-fw-state" in text  # MetalLB's template has it
    assert anchorconf.frr_network(64513, "198.18.5.100", True)[-1] == "network 198.18.5.100/32"
    assert anchorconf.frr_network(64513, "198.18.5.100", False)[-1] == "no network 198.18.5.100/32"


def test_a_drain_counts_the_node_s_websockets_and_those_that_broke_after_it() -> None:
    events = [
        {"client": 0, "event": "connected", "via": "node1", "at": 1.0},
        {"client": 1, "event": "connected", "via": "node1", "at": 1.0},
        {"client": 2, "event": "connected", "via": "node2", "at": 1.0},
        {"client": 0, "event": "error", "via": "node1", "at": 0.5},  # before the drain
        {"client": 0, "event": "error", "via": "node1", "at": 6.0},
        {"client": 2, "event": "error", "via": "node2", "at": 7.0},
        {"client": 3, "event": "connected", "via": "node1", "at": 8.0},  # after: not counted
    ]
    assert bgpanchors.drain_outcome(events, "node1", fault=5.0) == {
        "on_node": 2,
        "broken_on_node": 1,
        "broken_elsewhere": 1,
    }


def test_a_trial_never_withdrawn_is_counted_apart_from_the_figures() -> None:
    trials = [
        {"withdrawal": 2.0, "failing": 1.5},
        {"withdrawal": None, "failing": 9.0},
        {"withdrawal": 4.0, "failing": 3.5},
    ]
    found = bgpanchors.figures({"proxy SIGKILL": trials}, {"proxy SIGKILL": {"load": 3.0}})
    entry = found["proxy SIGKILL"]
    assert entry["never_withdrawn"] == 1
    assert entry["withdrawal"]["n"] == 2 and entry["withdrawal"]["max_ms"] == 4000
    assert entry["clients_failing"]["n"] == 3 and entry["clients_failing"]["max_ms"] == 9000
    assert entry["load"] == 3.0


def test_the_report_puts_ours_beside_each_anchor_per_fault() -> None:
    def s(ms: float) -> dict[str, float]:
        return {"n": 5, "p50_ms": ms, "p95_ms": ms, "max_ms": ms}

    ours = {
        "when": "2026-12-03 11:50 UTC",
        "host": "vm",
        "load": 21.8,
        "bird": "2.0.12",
        "withdrawal": {"link cut (BFD)": s(364)},
        "clients_failing": {"link cut (BFD)": s(279)},
    }
    entry = {"when": "w", "load": 1.0, "withdrawal": s(88_000), "clients_failing": s(87_000)}
    doc = {
        "anchors": {
            "metallb": {"host": "vm", "cpus": 2, "ran": "x.", "faults": {"link cut": entry}}
        }
    }
    text = bgpanchors.markdown(doc, ours, {})
    section = text.split("## link cut")[1].split("##")[0]
    assert (
        "| haproxy-py (BIRD, BFD 100 ms x 3, hold 9 s) | 5 | 364 | 364 | 364 | 5 | 279" in section
    )
    assert "| MetalLB BGP defaults on FRR (hold 90 s) | 5 | 88000 |" in section
    assert "Read: metallb/metallb" in text
    assert "`bench/results/bgp.md`, run 2026-12-03 11:50 UTC on vm (load average 21.8" in text
