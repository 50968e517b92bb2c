"""Balancing algorithms: distribution, weights, limits, down servers and hash stability."""

from __future__ import annotations

from collections import Counter

from haproxy_py.proxy.balancer import HashRing, LeastConn, RoundRobin, Server, make_balancer
from haproxy_py.proxy.config import ServerConfig


def servers(*weights: int, max_conns: int = 0) -> list[Server]:
    return [
        Server(ServerConfig("127.0.0.1", 9000 + i, weight=w, max_conns=max_conns))
        for i, w in enumerate(weights)
    ]


def picks(balancer: LeastConn, n: int, key: bytes | None = None) -> Counter[int]:
    count: Counter[int] = Counter()
    for _ in range(n):
        server = balancer.pick(key)
        assert server is not None
        count[server.port - 9000] += 1
    return count


class TestRoundRobin:
    def test_equal_weights_alternate(self) -> None:
        """Each server gets its turn in order."""
        pool = servers(1, 1, 1)
        balancer = RoundRobin(pool)
        order = [balancer.pick() for _ in range(6)]
        assert order == pool + pool

    def test_weights_interleave(self) -> None:
        """Weight 3:1 gives 3:1 picks, interleaved rather than in a burst."""
        balancer = RoundRobin(servers(3, 1))
        order = [s.port - 9000 for s in (balancer.pick() for _ in range(8)) if s]
        assert Counter(order) == {0: 6, 1: 2}
        assert order[:4] in ([0, 0, 1, 0], [0, 1, 0, 0])

    def test_skips_down_and_excluded(self) -> None:
        """Down servers and those already tried are never picked."""
        pool = servers(1, 1, 1)
        pool[0].up = False
        balancer = RoundRobin(pool)
        assert {balancer.pick(exclude=[pool[1]]) for _ in range(4)} == {pool[2]}

    def test_none_when_all_down(self) -> None:
        pool = servers(1, 1)
        for s in pool:
            s.up = False
        assert RoundRobin(pool).pick() is None


class TestLeastConn:
    def test_prefers_fewest_active(self) -> None:
        """The server with the fewest open connections wins."""
        pool = servers(1, 1, 1)
        pool[0].active, pool[1].active, pool[2].active = 5, 1, 3
        assert LeastConn(pool).pick() is pool[1]

    def test_spreads_long_lived_connections(self) -> None:
        """Connections that stay open end up evenly spread."""
        pool = servers(1, 1, 1, 1)
        balancer = LeastConn(pool)
        for _ in range(40):
            server = balancer.pick()
            assert server is not None
            server.active += 1
        assert [s.active for s in pool] == [10, 10, 10, 10]

    def test_weight_scales_share(self) -> None:
        """A weight-2 server holds twice the connections of a weight-1 one."""
        pool = servers(2, 1)
        balancer = LeastConn(pool)
        for _ in range(30):
            server = balancer.pick()
            assert server is not None
            server.active += 1
        assert [s.active for s in pool] == [20, 10]

    def test_ties_rotate(self) -> None:
        """With equal load, short requests still spread over all servers."""
        assert picks(LeastConn(servers(1, 1, 1)), 30) == {0: 10, 1: 10, 2: 10}

    def test_max_conns_full_server_skipped(self) -> None:
        """A server at max_conns is skipped; when all are full there is none."""
        pool = servers(1, 1, max_conns=2)
        pool[0].active = 2
        balancer = LeastConn(pool)
        assert balancer.pick() is pool[1]
        pool[1].active = 2
        assert balancer.pick() is None


class TestHashRing:
    def test_same_key_same_server(self) -> None:
        """A key always maps to the same server, also in a second balancer (another node)."""
        ring_a, ring_b = HashRing(servers(1, 1, 1)), HashRing(servers(1, 1, 1))
        for key in (b"10.0.0.1", b"alice", b"bob", b"carol"):
            first = ring_a.pick(key)
            assert first is not None
            assert all(ring_a.pick(key) is first for _ in range(5))
            other = ring_b.pick(key)
            assert other is not None and other.port == first.port

    def test_keys_spread_by_weight(self) -> None:
        """Many keys spread roughly by weight."""
        ring = HashRing(servers(1, 1, 2))
        count: Counter[int] = Counter()
        for i in range(4000):
            server = ring.pick(f"user-{i}".encode())
            assert server is not None
            count[server.port - 9000] += 1
        assert 700 < count[0] < 1300 and 700 < count[1] < 1300 and 1600 < count[2] < 2400

    def test_only_failed_servers_keys_move(self) -> None:
        """When one server goes down only its keys move; the others keep theirs."""
        pool = servers(1, 1, 1)
        ring = HashRing(pool)
        keys = [f"k{i}".encode() for i in range(500)]
        before = {k: ring.pick(k) for k in keys}
        pool[1].up = False
        after = {k: ring.pick(k) for k in keys}
        for k in keys:
            if before[k] is not pool[1]:
                assert after[k] is before[k]
            else:
                assert after[k] in (pool[0], pool[2])

    def test_missing_key_falls_back_to_least_conn(self) -> None:
        pool = servers(1, 1)
        pool[0].active = 3
        assert HashRing(pool).pick(None) is pool[1]


def test_make_balancer_by_name() -> None:
    pool = servers(1)
    assert type(make_balancer("round_robin", pool)) is RoundRobin
    assert type(make_balancer("least_conn", pool)) is LeastConn
    assert type(make_balancer("source_hash", pool)) is HashRing
    assert type(make_balancer("header_hash", pool)) is HashRing
