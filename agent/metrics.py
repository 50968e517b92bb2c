"""The agent's Prometheus metrics."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import structlog
from aiohttp import web

from haproxy_py.metrics import Registry, Sample, serve

log = structlog.get_logger(__name__)


class AgentMetrics:
    """Counters bumped by the daemon; lease and VIP gauges computed at scrape time."""

    def __init__(
        self,
        lease_remaining: Callable[[], float],
        vips_held: Callable[[], Iterable[str]],
    ) -> None:
        self.registry = Registry("haproxy_py_agent")
        self.port: int | None = None  # where /metrics listens, once it does
        r = self.registry

        def remaining() -> Iterable[Sample]:
            return [({}, max(0.0, lease_remaining()))]

        def held() -> Iterable[Sample]:
            return [({}, float(len(list(vips_held()))))]

        r.gauge(
            "lease_remaining_seconds", "Seconds until the lease deadline as counted here", remaining
        )
        self.keepalive_latency = r.gauge(
            "keepalive_latency_seconds", "Round trip of the last successful lease keepalive"
        )
        self.keepalive_failures = r.counter("keepalive_failures_total", "Failed lease keepalives")
        r.gauge("vips_held", "VIP addresses this node holds", held)
        self.garps = r.counter("garps_sent_total", "Gratuitous ARP frames sent")
        self.transitions = r.counter(
            "vip_transitions_total", "VIP addresses added or removed, by direction and reason"
        )
        self.etcd_reachable = r.gauge("etcd_reachable", "1 when the last etcd call succeeded")
        self.proxy_healthy = r.gauge("proxy_healthy", "1 when the local proxy is healthy")
        self.fenced = r.counter(
            "self_fences_total", "Times the agent dropped VIPs for lack of keepalives"
        )
        self.refused = r.counter(
            "vips_refused_total", "VIPs assigned here that this node's allowed_vips does not allow"
        )

    async def serve(self, host: str | None, port: int) -> web.AppRunner | None:
        """Serve /metrics on host:port (None: off); a bind failure is logged, not fatal."""
        if host is None:
            return None
        try:
            runner, self.port = await serve(self.registry, host, port)
        except OSError as exc:
            log.error("metrics endpoint not started", bind=f"{host}:{port}", error=exc.strerror)
            return None
        log.info("metrics listening", url=f"http://{host}:{self.port}/metrics")
        return runner
