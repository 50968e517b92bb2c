"""The controller's Prometheus metrics."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from haproxy_py.metrics import Registry, Sample

if TYPE_CHECKING:
    from controller.loop import Controller


class ControllerMetrics:
    """Counters bumped by the loop; leadership and lease gauges computed at scrape time."""

    def __init__(self) -> None:
        self.registry = Registry("haproxy_py_controller")
        r = self.registry
        self._controller: Controller | None = None

        def is_leader() -> Iterable[Sample]:
            leading = self._controller is not None and self._controller.leading
            return [({}, 1.0 if leading else 0.0)]

        def lease_remaining() -> Iterable[Sample]:
            c = self._controller
            return [({}, c.election.lease_remaining() if c else 0.0)]

        def keepalive_latency() -> Iterable[Sample]:
            c = self._controller
            return [({}, c.election.last_keepalive_latency if c else 0.0)]

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

    def bind(self, controller: Controller) -> None:
        self._controller = controller
