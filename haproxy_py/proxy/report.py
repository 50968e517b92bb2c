"""What one data-plane process has counted, as one immutable value; and the sum over workers.

`Stats` is the hot path's side: plain ints a request adds to.
A worker builds a `TrafficReport` from its live objects when the master asks
(`traffic`), the master adds the workers' reports together (`merge`) and the
admin API renders the sum as `/status`, the status page and `/metrics`: every
figure is counted once, by the process that saw it. Counters of a worker that
died are kept in the master's `retired` report, so the node's counters never
go backwards when a worker is restarted (what it counted after the last
report the master saw is lost; gauges die with it, as its connections did).
Pure: no I/O, no clock.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from haproxy_py.proxy.accesslog import AccessLog
    from haproxy_py.proxy.iplimits import IpLimiter
    from haproxy_py.proxy.listeners import Listener
    from haproxy_py.proxy.relay import Tunnels
    from haproxy_py.proxy.runtime import Runtime

STATUS_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx")


class Stats:
    """Counters of finished HTTP exchanges (tunnels count themselves in `Tunnels`)."""

    def __init__(self) -> None:
        self.responses = [0] * 6  # by status // 100
        self.http_bytes_in = 0  # request bodies from clients
        self.http_bytes_out = 0  # response bodies to clients
        self.connections_total = 0
        self.connections_refused = 0
        self.connections_dropped = 0  # before HTTP: no or untrusted PROXY header


@dataclass(frozen=True)
class TrafficReport:
    """Counters since the process started (summed as they are) and gauges of now."""

    responses: tuple[int, ...] = (0, 0, 0, 0, 0)  # by status class, 1xx..5xx
    http_bytes_in: int = 0
    http_bytes_out: int = 0
    websocket_bytes_in: int = 0
    websocket_bytes_out: int = 0
    websockets_total: int = 0
    connections_total: int = 0
    connections_refused: int = 0
    connections_dropped: int = 0
    access_log_dropped: int = 0
    per_ip_refused: tuple[tuple[str, int], ...] = ()
    server_totals: tuple[tuple[str, str, int], ...] = ()  # (backend, address, requests ever)
    # gauges
    websockets_open: int = 0
    listener_connections: tuple[tuple[str, int], ...] = ()  # (listener, open)
    processes: int = 1  # data-plane processes that answered

    def without_gauges(self) -> TrafficReport:
        """The counters only (what a dead worker leaves behind)."""
        return replace(self, websockets_open=0, listener_connections=(), processes=0)

    def listener(self, name: str) -> int:
        return dict(self.listener_connections).get(name, 0)

    def server_total(self, backend: str, address: str) -> int:
        for b, a, total in self.server_totals:
            if (b, a) == (backend, address):
                return total
        return 0


def _sum_pairs(groups: Iterable[tuple[tuple[str, int], ...]]) -> tuple[tuple[str, int], ...]:
    total: Counter[str] = Counter()
    for group in groups:
        for key, value in group:
            total[key] += value
    return tuple(sorted(total.items()))


def merge(reports: Iterable[TrafficReport]) -> TrafficReport:
    """The node's figures: every counter and gauge added over `reports`."""
    rs = list(reports)
    totals: Counter[tuple[str, str]] = Counter()
    for r in rs:
        for backend, address, total in r.server_totals:
            totals[backend, address] += total

    def add(name: str) -> int:
        return sum(getattr(r, name) for r in rs)

    return TrafficReport(
        responses=tuple(sum(c) for c in zip(*(r.responses for r in rs), strict=True))
        if rs
        else TrafficReport.responses,
        http_bytes_in=add("http_bytes_in"),
        http_bytes_out=add("http_bytes_out"),
        websocket_bytes_in=add("websocket_bytes_in"),
        websocket_bytes_out=add("websocket_bytes_out"),
        websockets_total=add("websockets_total"),
        connections_total=add("connections_total"),
        connections_refused=add("connections_refused"),
        connections_dropped=add("connections_dropped"),
        access_log_dropped=add("access_log_dropped"),
        per_ip_refused=_sum_pairs(r.per_ip_refused for r in rs),
        server_totals=tuple((b, a, t) for (b, a), t in sorted(totals.items())),
        websockets_open=add("websockets_open"),
        listener_connections=_sum_pairs(r.listener_connections for r in rs),
        processes=add("processes"),
    )


class Counted(Protocol):
    """What a report is read from (`server.ProxyServer`)."""

    stats: Stats
    tunnels: Tunnels
    runtime: Runtime
    listeners: list[Listener]
    ip_limits: IpLimiter
    access_log: AccessLog


def report_of(proxy: Counted) -> TrafficReport:
    """The report of one process, read from its live objects."""
    stats, tunnels = proxy.stats, proxy.tunnels
    ws_in, ws_out = tunnels.bytes_each_way()
    return TrafficReport(
        responses=tuple(stats.responses[1:]),
        http_bytes_in=stats.http_bytes_in,
        http_bytes_out=stats.http_bytes_out,
        websocket_bytes_in=ws_in,
        websocket_bytes_out=ws_out,
        websockets_total=tunnels.total,
        connections_total=stats.connections_total,
        connections_refused=stats.connections_refused,
        connections_dropped=stats.connections_dropped,
        access_log_dropped=proxy.access_log.dropped,
        per_ip_refused=tuple(sorted(proxy.ip_limits.refused.items())),
        server_totals=tuple(
            (backend.name, s.address, s.total)
            for backend in proxy.runtime.backends.values()
            for s in backend.servers
        ),
        websockets_open=len(tunnels),
        listener_connections=tuple((lst.config.name, lst.active) for lst in proxy.listeners),
    )
