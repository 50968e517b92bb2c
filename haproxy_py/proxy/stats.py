"""The proxy's counters and their Prometheus families.

The hot path only adds to plain ints on `Stats`; at scrape time the admin API
fetches the node's `TrafficReport` (one process, or the sum over workers) and
every family reads it, and the live runtime for health and server load.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from haproxy_py.metrics import Registry, Sample
from haproxy_py.proxy.report import STATUS_CLASSES, TrafficReport

if TYPE_CHECKING:
    from haproxy_py.proxy.runtime import Runtime


def build_registry(
    runtime: Callable[[], Runtime], traffic: Callable[[], TrafficReport]
) -> Registry:
    """The proxy's families: traffic from the node's report (fetched before each render),
    health and server load from the live runtime."""
    registry = Registry("haproxy_py")

    def requests() -> Iterable[Sample]:
        for name, value in zip(STATUS_CLASSES, traffic().responses, strict=True):
            yield {"code": name}, value

    def bytes_total() -> Iterable[Sample]:
        t = traffic()
        yield {"direction": "in", "kind": "http"}, t.http_bytes_in
        yield {"direction": "out", "kind": "http"}, t.http_bytes_out
        yield {"direction": "in", "kind": "websocket"}, t.websocket_bytes_in
        yield {"direction": "out", "kind": "websocket"}, t.websocket_bytes_out

    def servers_up() -> Iterable[Sample]:
        for backend in runtime().backends.values():
            for s in backend.servers:
                yield {"backend": backend.name, "server": s.address}, 1.0 if s.up else 0.0

    def server_active() -> Iterable[Sample]:
        for backend in runtime().backends.values():
            for s in backend.servers:
                yield {"backend": backend.name, "server": s.address}, s.load()

    def check_latency() -> Iterable[Sample]:
        for backend in runtime().backends.values():
            for tracker in backend.trackers:
                if tracker.latency is not None:
                    yield (
                        {"backend": backend.name, "server": tracker.server.address},
                        tracker.latency,
                    )

    def connections() -> Iterable[Sample]:
        for name, value in traffic().listener_connections:
            yield {"listener": name}, value

    def counter(name: str, help: str, collect: Callable[[], Iterable[Sample]]) -> None:
        registry.counter(name, help).collect = collect

    def one(field: str) -> Callable[[], Iterable[Sample]]:
        return lambda: [({}, getattr(traffic(), field))]

    counter("http_responses_total", "HTTP responses sent to clients, by status class", requests)
    counter("bytes_total", "Bytes relayed: in = client to backend, out = to client", bytes_total)
    counter("websocket_sessions_total", "WebSocket tunnels opened", one("websockets_total"))
    counter("connections_total", "Client connections accepted", one("connections_total"))
    counter(
        "connections_refused_total",
        "Client connections refused (limit reached or draining)",
        one("connections_refused"),
    )
    counter(
        "connections_dropped_total",
        "Client connections dropped before HTTP (missing or untrusted PROXY header)",
        one("connections_dropped"),
    )
    counter(
        "per_ip_refused_total",
        "Client connections refused by a per-address limit (answered 429), by limit",
        lambda: [({"limit": k}, v) for k, v in traffic().per_ip_refused],
    )
    counter(
        "access_log_dropped_total",
        "Access log lines dropped because the log writer fell behind",
        one("access_log_dropped"),
    )
    registry.gauge("websocket_sessions_active", "WebSocket tunnels open", one("websockets_open"))
    registry.gauge("client_connections", "Client connections open, by listener", connections)
    registry.gauge("backend_server_up", "1 when the backend server is up, else 0", servers_up)
    registry.gauge("backend_server_active", "Requests in flight plus open tunnels", server_active)
    registry.gauge("health_check_latency_seconds", "Duration of the last check", check_latency)
    registry.gauge("worker_processes", "Data-plane processes that answered", one("processes"))
    return registry
