"""The owners' probe verdicts (`controller.probes`): one lost probe never counts; a run of
misses longer than the limit does; the guard keeps embargoed VIPs from being assigned."""

from __future__ import annotations

from controller.probes import MIN_MISSES, Prober, Verdicts
from haproxy_py.cluster.records import ClusterView
from haproxy_py.cluster.timing import Timing, probe_limit

TIMING = Timing(lease_ttl=2, keepalive_interval=0.25, address_lifetime=1.0, fence_margin=0.2)
LIMIT = probe_limit(TIMING)


def test_one_lost_probe_is_not_a_verdict() -> None:
    v = Verdicts(LIMIT)
    v.result("n2", False, 0.0)
    v.result("n2", True, 0.25)
    assert not v.overdue("n2", 10.0)


def test_misses_for_longer_than_the_limit_are() -> None:
    v = Verdicts(LIMIT)
    t = 0.0
    while t < LIMIT:
        v.result("n2", False, t)
        assert not v.overdue("n2", t)
        t += 0.25
    v.result("n2", False, t)
    assert v.overdue("n2", t)


def test_few_misses_over_a_long_stall_are_not() -> None:
    v = Verdicts(LIMIT)
    v.result("n2", False, 0.0)
    v.result("n2", False, 5.0)  # the controller itself stalled between its probes
    assert MIN_MISSES > 2 and not v.overdue("n2", 5.0)


def test_forgetting_nodes_that_own_nothing() -> None:
    v = Verdicts(LIMIT)
    v.result("n2", False, 0.0)
    v.keep({"n1"})
    assert v.failing == {}


def test_guard_marks_embargoed_vips_occupied_until_the_fence_fell() -> None:
    prober = Prober(None, None, 9734, TIMING)  # type: ignore[arg-type]
    prober.embargo = {"198.18.0.10": 5.0}
    view = ClusterView("c", 1)
    assert "198.18.0.10" in prober.guard(view, 4.9).occupied
    assert prober.guard(view, 5.0).occupied == frozenset()
