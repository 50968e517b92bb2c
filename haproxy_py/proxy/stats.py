"""The proxy's counters and their Prometheus families.

The hot path only adds to plain ints on `Stats`; every family reads them (and
the live runtime) when `/metrics` is scraped.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Protocol

from haproxy_py.metrics import Registry, Sample

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


class StatsSource(Protocol):
    """What the metric families read of the proxy (`server.ProxyServer`), at scrape time."""

    stats: Stats
    tunnels: Tunnels
    runtime: Runtime
    listeners: list[Listener]
    ip_limits: IpLimiter
    access_log: AccessLog


def build_registry(server: StatsSource) -> Registry:
    registry = Registry("haproxy_py")
    stats = server.stats
    tunnels = server.tunnels

    def requests() -> Iterable[Sample]:
        for index, name in enumerate(STATUS_CLASSES, start=1):
            yield {"code": name}, stats.responses[index]

    def bytes_total() -> Iterable[Sample]:
        ws_in, ws_out = tunnels.bytes_each_way()
        yield {"direction": "in", "kind": "http"}, stats.http_bytes_in
        yield {"direction": "out", "kind": "http"}, stats.http_bytes_out
        yield {"direction": "in", "kind": "websocket"}, ws_in
        yield {"direction": "out", "kind": "websocket"}, ws_out

    def servers_up() -> Iterable[Sample]:
        for backend in server.runtime.backends.values():
            for s in backend.servers:
                yield {"backend": backend.name, "server": s.address}, 1.0 if s.up else 0.0

    def server_active() -> Iterable[Sample]:
        for backend in server.runtime.backends.values():
            for s in backend.servers:
                yield {"backend": backend.name, "server": s.address}, s.active

    def check_latency() -> Iterable[Sample]:
        for backend in server.runtime.backends.values():
            for tracker in backend.trackers:
                if tracker.latency is not None:
                    yield (
                        {"backend": backend.name, "server": tracker.server.address},
                        tracker.latency,
                    )

    def connections() -> Iterable[Sample]:
        for listener in server.listeners:
            yield {"listener": listener.config.name}, listener.active

    def counter(name: str, help: str, collect: Callable[[], Iterable[Sample]]) -> None:
        registry.counter(name, help).collect = collect

    counter("http_responses_total", "HTTP responses sent to clients, by status class", requests)
    counter("bytes_total", "Bytes relayed: in = client to backend, out = to client", bytes_total)
    counter("websocket_sessions_total", "WebSocket tunnels opened", lambda: [({}, tunnels.total)])
    counter(
        "connections_total", "Client connections accepted", lambda: [({}, stats.connections_total)]
    )
    counter(
        "connections_refused_total",
        "Client connections refused (limit reached or draining)",
        lambda: [({}, stats.connections_refused)],
    )
    counter(
        "connections_dropped_total",
        "Client connections dropped before HTTP (missing or untrusted PROXY header)",
        lambda: [({}, stats.connections_dropped)],
    )
    counter(
        "per_ip_refused_total",
        "Client connections refused by a per-address limit (answered 429), by limit",
        lambda: [({"limit": k}, v) for k, v in server.ip_limits.refused.items()],
    )
    counter(
        "access_log_dropped_total",
        "Access log lines dropped because the log writer fell behind",
        lambda: [({}, server.access_log.dropped)],
    )
    registry.gauge(
        "websocket_sessions_active", "WebSocket tunnels open", lambda: [({}, len(tunnels))]
    )
    registry.gauge("client_connections", "Client connections open, by listener", connections)
    registry.gauge("backend_server_up", "1 when the backend server is up, else 0", servers_up)
    registry.gauge("backend_server_active", "Requests in flight plus open tunnels", server_active)
    registry.gauge("health_check_latency_seconds", "Duration of the last check", check_latency)
    return registry
