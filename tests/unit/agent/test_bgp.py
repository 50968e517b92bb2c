"""The BGP announcer's pure core: when the node shows its VIPs to the router, and why."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

from agent import bgpside
from agent.bgp import Drain, Leaving, Liveness, Routes, open_connections, routes, want
from agent.cli import parse
from agent.proxy import ProxyStatus
from haproxy_py.cluster import bird, birdconf
from haproxy_py.cluster.config import parse_cluster
from haproxy_py.configfile import ConfigError, load

VIPS = ("198.18.5.100", "198.18.5.101")
LIVE = ProxyStatus(True, "/healthz answered 200", draining=False)
REFUSED = ProxyStatus(False, "refused", refused=True)
SLOW = ProxyStatus(False, "timeout")
DRAINING = ProxyStatus(False, "/healthz answered 503: draining", draining=True)


def test_a_live_node_announces_every_permitted_vip() -> None:
    w = want(VIPS, live=True, draining=False, fenced=False)
    assert w.serve and w.vips == frozenset(VIPS)


def test_health_closes_the_link_but_never_edits_the_vip_list() -> None:
    for live, draining, fenced in [(False, False, False), (True, True, False), (True, False, True)]:
        w = want(VIPS, live=live, draining=draining, fenced=fenced)
        assert not w.serve, w.reason
        assert w.vips == frozenset(VIPS)


def test_fenced_wins_over_everything_and_says_so() -> None:
    assert want(VIPS, live=True, draining=False, fenced=True).reason.startswith("fenced")


def test_a_refused_probe_counts_at_once() -> None:
    live = Liveness(fall=3)
    assert live.observe(LIVE)
    assert not live.observe(REFUSED)


def test_a_drain_counts_at_once() -> None:
    live = Liveness(fall=3)
    live.observe(LIVE)
    assert not live.observe(DRAINING)
    assert live.draining


def test_timeouts_count_only_after_fall_misses_in_a_row() -> None:
    live = Liveness(fall=3)
    live.observe(LIVE)
    assert live.observe(SLOW)
    assert live.observe(SLOW)
    assert not live.observe(SLOW)


def test_an_answer_between_timeouts_starts_the_count_again() -> None:
    live = Liveness(fall=2)
    live.observe(LIVE)
    live.observe(SLOW)
    live.observe(LIVE)
    assert live.observe(SLOW)


def test_a_node_is_not_live_before_its_first_answer() -> None:
    live = Liveness(fall=3)
    assert not live.live
    assert not live.observe(SLOW)


def test_a_restarted_announcer_does_not_know_until_an_answer_or_fall_misses() -> None:
    live = Liveness(fall=3)
    live.observe(SLOW)
    assert not live.known  # one slow probe after a restart must not withdraw a serving node
    live.observe(SLOW)
    live.observe(SLOW)
    assert live.known and not live.live


def test_a_first_answer_or_refusal_is_known_at_once() -> None:
    for status in (LIVE, REFUSED):
        live = Liveness(fall=3)
        live.observe(status)
        assert live.known


class TestFence:
    """`agent.bgpside.fenced`: the floating IP's lease rule applied to an announcement."""

    MARGIN = 0.2

    def test_announces_while_the_lease_provably_lives(self) -> None:
        assert bgpside.fenced(10.0, 11.0, -math.inf, self.MARGIN, 0.0) is False
        assert bgpside.fenced(10.8, 11.0, -math.inf, self.MARGIN, 0.0) is True

    def test_a_failsafe_grant_keeps_it_past_the_lease(self) -> None:
        assert bgpside.fenced(12.0, 11.0, 12.5, self.MARGIN, 0.0) is False
        assert bgpside.fenced(12.4, 11.0, 12.5, self.MARGIN, 0.0) is True

    def test_a_restarted_agent_touches_nothing_for_one_lease_then_withdraws(self) -> None:
        assert bgpside.fenced(1.0, -math.inf, -math.inf, self.MARGIN, 2.0) is None
        assert bgpside.fenced(2.0, -math.inf, -math.inf, self.MARGIN, 2.0) is True

    def test_a_lost_lease_after_the_start_fences_at_once(self) -> None:
        assert bgpside.fenced(5.0, -math.inf, -math.inf, self.MARGIN, 2.0) is True


def test_bgp_mode_needs_a_bgp_section(tmp_path: Path) -> None:
    path = tmp_path / "n.toml"
    path.write_text(
        '[node]\nname = "n1"\naddress = "198.18.0.5"\n'
        + '[cluster]\nmode = "bgp"\nvips = ["198.18.9.1"]\n'
    )
    with pytest.raises(ConfigError, match=r"there is no \[bgp\] section"):
        parse(load(path))
    path.write_text(
        path.read_text()
        + 'min_announcers = 2\n[bgp]\nasn = 64513\npeers = [{ name = "r", address = '
        '"198.18.0.1", asn = 64512 }]\n'
    )
    settings, _ = parse(load(path))
    assert settings.bgp is not None and settings.bgp.node.asn == 64513
    assert parse_cluster(load(path)).min_announcers == 2


class TestPlannedWithdrawal:
    """`agent.bgp.routes`: GRACEFUL_SHUTDOWN, established connections served until they end or
    the drain timeout, then 1001, then the withdrawal (RFC 8326)."""

    A, B = VIPS
    BOTH = frozenset(VIPS)
    DRAIN = Drain(hold=2.0, timeout=10.0, close_grace=2.0)

    def step(self, leaving: dict[str, Leaving], now: float, open_b: int) -> Routes:
        only_a = frozenset({self.A})
        return routes(only_a, self.BOTH, leaving, True, now, {self.B: open_b}, self.DRAIN)

    def test_a_vip_with_no_connection_is_tagged_for_the_hold_then_withdrawn(self) -> None:
        out = self.step({}, 10.0, open_b=0)
        assert (out.vips, out.leaving, out.close) == ({self.A}, {self.B: Leaving(10.0)}, set())
        assert self.step(out.leaving, 11.9, open_b=0).leaving == {self.B: Leaving(10.0)}
        out = self.step(out.leaving, 12.0, open_b=0)
        assert (out.vips, out.leaving, out.close) == ({self.A}, {}, set())

    def test_connections_that_end_by_themselves_end_the_shutdown_without_a_1001(self) -> None:
        out = self.step({}, 10.0, open_b=5)
        for now in (12.0, 15.0, 19.9):
            out = self.step(out.leaving, now, open_b=5)
            assert (out.leaving, out.close) == ({self.B: Leaving(10.0)}, set())
        out = self.step(out.leaving, 19.95, open_b=0)
        assert (out.leaving, out.close) == ({}, set())

    def test_at_the_drain_timeout_the_rest_are_told_1001_then_the_route_goes(self) -> None:
        out = self.step({}, 10.0, open_b=5)
        out = self.step(out.leaving, 20.0, open_b=5)
        assert (out.leaving, out.close) == ({self.B: Leaving(10.0, 20.0)}, {self.B})
        out = self.step(out.leaving, 21.0, open_b=2)  # closing, or clients that came back here
        assert (out.leaving, out.close) == ({self.B: Leaving(10.0, 20.0)}, {self.B})
        assert self.step(out.leaving, 21.5, open_b=0).leaving == {}  # all closed
        assert self.step(out.leaving, 22.0, open_b=2).leaving == {}  # or the close grace ended

    def test_a_drain_timeout_of_0_tells_them_at_once_and_still_holds_the_route(self) -> None:
        drain = Drain(hold=2.0, timeout=0.0, close_grace=2.0)
        only_a = frozenset({self.A})
        out = routes(only_a, self.BOTH, {}, True, 10.0, {self.B: 3}, drain)
        assert out.close == {self.B} and self.B in out.leaving
        out = routes(only_a, self.BOTH, out.leaving, True, 11.0, {self.B: 0}, drain)
        assert self.B in out.leaving  # the hold: the router moves new connections first

    def test_permitted_again_ends_the_shutdown(self) -> None:
        out = routes(self.BOTH, self.BOTH, {self.B: Leaving(10.0)}, serving=True, now=10.5)
        assert (out.vips, out.leaving) == (self.BOTH, {})

    def test_a_node_that_cannot_serve_withdraws_at_once(self) -> None:
        out = routes(frozenset(), self.BOTH, {self.B: Leaving(10.0)}, serving=False, now=10.1)
        assert (out.vips, out.leaving) == (frozenset(), {})


def test_open_connections_counts_established_and_close_wait_sockets_per_vip() -> None:
    def row(local: str, state: str) -> str:
        address, port = local.split(":")
        raw = int.from_bytes(bytes(int(x) for x in address.split(".")), sys.byteorder)
        return f"   0: {raw:08X}:{int(port):04X} 2913C6C6:D431 {state} 00000000:00000000 00:0 0 0"

    text = "\n".join(
        [
            "  sl  local_address rem_address   st tx_queue rx_queue ...",
            row(f"{VIPS[0]}:80", "0A"),  # the listener: not a connection
            row(f"{VIPS[0]}:80", "01"),
            row(f"{VIPS[0]}:80", "08"),
            row(f"{VIPS[0]}:80", "06"),  # TIME_WAIT: over
            row(f"{VIPS[1]}:80", "01"),
            row("198.18.0.11:41000", "01"),  # the node's own address (to a backend)
        ]
    )
    assert open_connections(text, frozenset(VIPS)) == {VIPS[0]: 2, VIPS[1]: 1}


def test_the_announce_file_tags_leaving_vips_with_graceful_shutdown() -> None:
    text = birdconf.announce_file([VIPS[0]], "havips", leaving=[VIPS[1]])
    assert f'route {VIPS[0]}/32 via "havips";' in text
    assert f'route {VIPS[1]}/32 via "havips" {{ bgp_community.add((65535, 0)); }};' in text


def test_session_states_name_each_peers_session_and_bfd_state() -> None:
    protocols = {
        "tor1": bird.Protocol("tor1", "BGP", "up", "12:00:00", "Established"),
        "tor2": bird.Protocol("tor2", "BGP", "start", "12:00:01", "Active  Socket: refused"),
    }
    bfd = {"198.18.0.1": "Up", "198.18.0.2": "Down"}
    peers = {"tor1": "198.18.0.1", "tor2": "198.18.0.2", "tor3": "198.18.0.3"}
    assert bgpside.session_states(peers, protocols, bfd) == {
        "tor1": "Established, BFD Up",
        "tor2": "Active, BFD Down",
        "tor3": "absent",
    }


def test_session_states_are_written_once_they_held_not_on_the_way_up() -> None:
    up = {"tor1": "Established, BFD Up"}
    passing = {"tor1": "OpenSent, BFD Init"}
    assert not bgpside.settled(up, passing, since=10.0, now=10.0)  # just seen
    assert bgpside.settled(passing, up, since=10.0, now=10.0)  # up: written at once
    assert bgpside.settled({}, {"tor1": "Established"}, since=10.0, now=10.0)  # no BFD
    assert not bgpside.settled({}, {"tor1": "Established, BFD Down"}, since=10.0, now=10.0)
    assert not bgpside.settled({}, passing, since=10.0, now=10.0 + bgpside.SETTLE / 2)
    assert bgpside.settled({}, passing, since=10.0, now=10.0 + bgpside.SETTLE)
    assert not bgpside.settled(up, up, since=0.0, now=100.0)  # nothing new to write
