"""Choosing a backend server for a new request or WebSocket (pure: no I/O, no clock).

A `Server` carries what every algorithm looks at: whether it is up, how many
requests and tunnels it has open (`active`), its weight and `max_conns`.
Servers that are down, full or already tried for this request are skipped.

* `least_conn` (default): fewest open connections per unit of weight; this is
  what spreads long-lived WebSockets evenly. Ties rotate.
* `round_robin`: smooth weighted round robin (as NGINX does it), so weights
  interleave instead of bursting.
* `source_hash` / `header_hash`: a consistent hash ring (`64 x weight` points
  per server, stable hash), so each key sticks to one server, the same one on
  every proxy node, and only the keys of a failed server move. A request without
  the key (no header or cookie) falls back to `least_conn`.
"""

from __future__ import annotations

import bisect
import hashlib
from collections.abc import Collection, Sequence

from haproxy_py.proxy.config import ServerConfig

RING_POINTS_PER_WEIGHT = 64


class Server:
    """One backend server's live state, shared by the balancer, health checks and the proxy."""

    __slots__ = (
        "_cells",
        "_own",
        "_row",
        "_width",
        "active",
        "address",
        "config",
        "host",
        "host_header",
        "max_conns",
        "port",
        "total",
        "up",
        "weight",
    )

    def __init__(self, config: ServerConfig) -> None:
        self.configure(config)
        self.host = config.host
        self.port = config.port
        self.address = config.address
        self.host_header = config.address.encode()  # the Host of a request that had none
        self.up = True
        self.active = 0  # requests in flight + open WebSocket tunnels, of this process
        self.total = 0  # requests and tunnels ever sent here
        self._cells: memoryview | None = None  # shared counts of every worker (see `share`)
        self._row = self._own = self._width = 0

    def share(self, cells: memoryview, row: int, width: int, column: int) -> None:
        """Count in row `row` of a shared table of `width` columns, in cell `column` (-1: only
        read it); `load()` is then the whole node's count, every worker's connections."""
        self._cells = cells
        self._row = row * width
        self._width = width
        self._own = row * width + column
        if column >= 0:
            cells[self._own] = self.active

    def acquire(self) -> None:
        """A request or tunnel starts on this server."""
        self.active += 1
        self.total += 1
        cells = self._cells
        if cells is not None:
            cells[self._own] += 1

    def release(self) -> None:
        self.active -= 1
        cells = self._cells
        if cells is not None:
            cells[self._own] -= 1

    def load(self) -> int:
        """Open requests and tunnels on this server, from every worker process."""
        cells = self._cells
        if cells is None:
            return self.active
        start = self._row
        return sum(cells[start : start + self._width])

    def configure(self, config: ServerConfig) -> None:
        """Take a reloaded config of the same address (its state carries on)."""
        self.config = config
        self.weight = config.weight
        self.max_conns = config.max_conns

    @property
    def full(self) -> bool:
        return 0 < self.max_conns <= self.load()

    def __repr__(self) -> str:
        return f"<Server {self.address} up={self.up} active={self.load()}>"


def stable_hash(key: bytes) -> int:
    """The same on every node and every run (Python's hash() is salted per process)."""
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "big")


class LeastConn:
    """`pick` returns a usable server or None (all down, full or excluded); the other
    algorithms derive from this one because they fall back to it."""

    def __init__(self, servers: Sequence[Server]) -> None:
        self.servers = list(servers)
        self._next = 0

    def pick(self, key: bytes | None = None, exclude: Collection[Server] = ()) -> Server | None:
        return self._least_conn(exclude)

    def _least_conn(self, exclude: Collection[Server]) -> Server | None:
        servers = self.servers
        n = len(servers)
        if n == 1:
            server = servers[0]
            usable = server.up and not server.full and server not in exclude
            return server if usable else None
        start = self._next
        self._next = (start + 1) % n
        best: Server | None = None
        best_score = 0.0
        for i in range(n):
            server = servers[(start + i) % n]
            if not server.up or server in exclude:
                continue
            load = server.active if server._cells is None else server.load()
            if 0 < server.max_conns <= load:
                continue
            score = load / server.weight
            if best is None or score < best_score:
                best, best_score = server, score
        return best


class RoundRobin(LeastConn):
    def __init__(self, servers: Sequence[Server]) -> None:
        super().__init__(servers)
        self._current = [0] * len(self.servers)

    def pick(self, key: bytes | None = None, exclude: Collection[Server] = ()) -> Server | None:
        current = self._current
        best = -1
        total = 0
        for i, server in enumerate(self.servers):
            if not (server.up and not server.full and server not in exclude):
                continue
            current[i] += server.weight
            total += server.weight
            if best < 0 or current[i] > current[best]:
                best = i
        if best < 0:
            return None
        current[best] -= total
        return self.servers[best]


class HashRing(LeastConn):
    """Consistent hashing; a missing key falls back to least connections."""

    def __init__(self, servers: Sequence[Server]) -> None:
        super().__init__(servers)
        points: list[tuple[int, int]] = []
        for index, server in enumerate(self.servers):
            for replica in range(RING_POINTS_PER_WEIGHT * server.weight):
                points.append((stable_hash(f"{server.address}#{replica}".encode()), index))
        points.sort()
        self._hashes = [h for h, _ in points]
        self._owners = [index for _, index in points]

    def pick(self, key: bytes | None = None, exclude: Collection[Server] = ()) -> Server | None:
        if key is None:
            return self._least_conn(exclude)
        servers = self.servers
        if not any(s.up and not s.full and s not in exclude for s in servers):
            return None
        owners = self._owners
        n = len(owners)
        i = bisect.bisect_left(self._hashes, stable_hash(key))
        for step in range(n):
            server = servers[owners[(i + step) % n]]
            if server.up and not server.full and server not in exclude:
                return server
        return None  # unreachable: some usable server owns ring points


def make_balancer(algorithm: str, servers: Sequence[Server]) -> LeastConn:
    if algorithm == "round_robin":
        return RoundRobin(servers)
    if algorithm in ("source_hash", "header_hash"):
        return HashRing(servers)
    return LeastConn(servers)
