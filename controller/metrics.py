"""The controller's Prometheus metrics."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from haproxy_py.metrics import Registry, Sample


class ControllerMetrics:
    """Counters bumped by the loop; leadership and lease gauges read from callables the loop
    binds, at scrape time (0 until then)."""

    def __init__(self) -> None:
        self.registry = Registry("haproxy_py_controller")
        r = self.registry
        self._leading: Callable[[], bool] = lambda: False
        self._lease_remaining: Callable[[], float] = lambda: 0.0
        self._keepalive_latency: Callable[[], float] = lambda: 0.0

        def is_leader() -> Iterable[Sample]:
            return [({}, 1.0 if self._leading() else 0.0)]

        def lease_remaining() -> Iterable[Sample]:
            return [({}, self._lease_remaining())]

        def keepalive_latency() -> Iterable[Sample]:
            return [({}, self._keepalive_latency())]

        r.gauge("is_leader", "1 while this controller is the elected leader", is_leader)
        self.transitions = r.counter(
            "leader_transitions_total", "Times this controller gained or lost leadership"
        )
        r.gauge("lease_remaining_seconds", "Seconds left on the leader lease", lease_remaining)
        r.gauge(
            "keepalive_latency_seconds",
            "Round trip of the last successful lease keepalive",
            keepalive_latency,
        )
        self.etcd_reachable = r.gauge("etcd_reachable", "1 when the last etcd read succeeded")
        self.vip_transitions = r.counter(
            "vip_transitions_total", "VIP ownership changes written by this controller"
        )
        self.unowned = r.gauge("vips_unowned", "Configured VIPs that nobody holds right now")
        self.cycle_seconds = r.gauge("cycle_seconds", "Duration of the last decision cycle")
        self.cycle_errors = r.counter("cycle_errors_total", "Cycles that failed")
        self.depositions = r.counter(
            "depositions_total", "Leading controllers this one deposed for failed probes"
        )

    def bind(
        self,
        leading: Callable[[], bool],
        lease_remaining: Callable[[], float],
        keepalive_latency: Callable[[], float],
    ) -> None:
        self._leading = leading
        self._lease_remaining = lease_remaining
        self._keepalive_latency = keepalive_latency
