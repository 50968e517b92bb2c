"""Readiness moves a VIP only where it helps; hold-downs on the controller's own clock."""

from __future__ import annotations

from dataclasses import replace

from controller.actions import AssignVip, Decision, ReleaseVip
from controller.decide import Policy, decide
from controller.memory import Memory
from controller.plan import Seen
from haproxy_py.cluster.records import NodeRecord
from tests.unit.controller.views import NOW, VIP1, VIP2, held, node, settings, view

POLICY = Policy(controller="c1")
SETTLED = Seen()  # every score has held for the hold-down


def ready(n: NodeRecord, up: int, pools: int = 2, vips: tuple[str, ...] = ()) -> NodeRecord:
    return replace(n, ready=up, pools=pools, vips=vips)


def run(v, seen: Seen = SETTLED) -> Decision:
    return decide(v, NOW, POLICY, seen)


def moves(d: Decision) -> dict[str, tuple[str | None, str]]:
    return {a.vip: (a.move_to, a.cause) for a in d.actions if isinstance(a, ReleaseVip)}


def assigns(d: Decision) -> dict[str, str]:
    return {a.vip: a.node for a in d.actions if isinstance(a, AssignVip)}


def test_a_shared_backend_outage_leaves_the_vip_where_it_is() -> None:
    """Every node equally unready: nothing moves, clients get the proxy's 503."""
    a, b = ready(node("a", 200), 0, vips=(VIP1,)), ready(node("b", 100), 0)
    d = run(view([a, b], [held(VIP1, "a")]))
    assert d.actions == ()


def test_the_last_candidate_keeps_its_vip_however_unready() -> None:
    a = ready(node("a", 200), 0, vips=(VIP1,))
    b = node("b", 100, healthy=False)
    assert run(view([a, b], [held(VIP1, "a")])).actions == ()


def test_a_strictly_readier_node_gets_the_vip() -> None:
    a, b = ready(node("a", 200), 1, vips=(VIP1,)), ready(node("b", 100), 2)
    assert moves(run(view([a, b], [held(VIP1, "a")]))) == {VIP1: ("b", "readiness")}


def test_no_readiness_move_before_both_scores_have_held() -> None:
    a, b = ready(node("a", 200), 1, vips=(VIP1,)), ready(node("b", 100), 2)
    v = view([a, b], [held(VIP1, "a")])
    assert run(v, Seen(settled=frozenset({"a"}))).actions == ()
    assert run(v, Seen(settled=frozenset({"b"}))).actions == ()


def test_failback_never_goes_to_a_less_ready_node() -> None:
    a, b = ready(node("a", 200), 1), ready(node("b", 100), 2, vips=(VIP1,))
    v = view([a, b], [held(VIP1, "b")], config=settings(failback=True, hold=0))
    assert run(v).actions == ()


def test_active_active_moves_only_to_a_readier_node() -> None:
    a = ready(node("a", 200), 1, vips=(VIP1,))
    b = ready(node("b", 100), 2, vips=(VIP2,))
    v = view(
        [a, b],
        [held(VIP1, "a"), held(VIP2, "b")],
        config=settings(VIP1, VIP2, mode="active-active"),
    )
    assert moves(run(v)) == {VIP1: ("b", "readiness")}
    equal = view(
        [ready(a, 2, vips=(VIP1,)), b],
        [held(VIP1, "a"), held(VIP2, "b")],
        config=settings(VIP1, VIP2, mode="active-active"),
    )
    assert run(equal).actions == ()


def test_an_unowned_vip_goes_to_the_readiest_node() -> None:
    a, b = ready(node("a", 200), 1), ready(node("b", 100), 2)
    assert assigns(run(view([a, b]))) == {VIP1: "b"}


def test_a_node_held_down_after_losing_liveness_is_passed_over_unless_alone() -> None:
    a, b = node("a", 200), node("b", 100)
    held_down = Seen(held_down={"a": 100.0})
    assert assigns(run(view([a, b]), held_down)) == {VIP1: "b"}
    assert assigns(run(view([a]), held_down)) == {VIP1: "a"}


def test_a_vip_its_owner_does_not_hold_is_released() -> None:
    a, b = node("a", 200), node("b", 100)
    v = view([a, b], [held(VIP1, "a")])
    assert moves(run(v, Seen(unheld=frozenset({VIP1})))) == {VIP1: (None, "not held")}


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_memory_measures_holds_on_its_own_clock() -> None:
    clock = Clock()
    memory = Memory(health_hold=10, ready_hold=5, unheld_limit=3, clock=clock)
    a = ready(node("a", 200, since=0.0), 2, vips=(VIP1,))  # wall-clock stamps are ignored
    b = ready(node("b", 100), 2)
    v = view([a, b], [held(VIP1, "a")])
    seen = memory.observe(v)
    assert seen.settled == frozenset() and not seen.held_down
    clock.now += 5
    assert memory.observe(v).settled == {"a", "b"}
    # b loses liveness, comes back: held down for 10 s from when it was last seen down
    memory.observe(view([a, replace(b, healthy=False)], [held(VIP1, "a")]))
    clock.now += 1
    memory.observe(view([a, replace(b, healthy=False)], [held(VIP1, "a")]))
    clock.now += 9.5
    assert set(memory.observe(v).held_down) == {"b"}
    clock.now += 1
    assert not memory.observe(v).held_down
    # a node that starts unready is not held down: it never lost liveness while seen
    memory.observe(view([a, b, node("c", healthy=False)], [held(VIP1, "a")]))
    clock.now += 1
    assert "c" not in memory.observe(view([a, b, node("c")], [held(VIP1, "a")])).held_down
    # b's score changes: not settled until it holds again
    b1 = ready(b, 1)
    assert "b" not in memory.observe(view([a, b1], [held(VIP1, "a")])).settled


def test_memory_counts_unheld_per_assignment() -> None:
    clock = Clock()
    memory = Memory(unheld_limit=3, clock=clock)
    a = node("a", 200)  # lists no VIP
    v = view([a], [held(VIP1, "a", revision=10)])
    assert memory.observe(v).unheld == frozenset()
    clock.now += 3
    assert memory.observe(v).unheld == {VIP1}
    # a new assignment starts the count again; listing it clears it
    v2 = view([a], [held(VIP1, "a", revision=11)])
    assert memory.observe(v2).unheld == frozenset()
    clock.now += 5
    listed = view([replace(a, vips=(VIP1,))], [held(VIP1, "a", revision=11)])
    assert memory.observe(listed).unheld == frozenset()


def test_a_stopping_owner_is_released_from_as_a_planned_move() -> None:
    a = replace(node("a", 200), stopping=True)
    d = run(view([a, node("b", 100)], [held(VIP1, "a")]))
    assert moves(d) == {VIP1: ("b", "released")}


def test_a_node_registered_again_under_a_new_lease_is_held_down() -> None:
    clock = Clock()
    memory = Memory(health_hold=10, clock=clock)
    a, b = node("a", 200), node("b", 100)
    memory.observe(view([a, b]))
    clock.now += 1
    memory.observe(view([b]))  # a's lease expired (its agent was killed)
    clock.now += 1
    seen = memory.observe(view([replace(a, lease=4242), b]))
    assert set(seen.held_down) == {"a"}
    assert assigns(run(view([replace(a, lease=4242), b]), seen)) == {VIP1: "b"}


def test_when_every_candidate_is_held_down_the_longest_held_goes_first() -> None:
    a, b = node("a", 200), node("b", 100)
    seen = Seen(held_down={"a": 105.0, "b": 100.0})
    assert assigns(run(view([a, b]), seen)) == {VIP1: "b"}


def test_an_operators_placement_is_rebalanced_once_it_has_held() -> None:
    """Two failovers onto one node pin both VIPs there for `failback_hold`, not for ever."""
    clock = Clock()
    memory = Memory(clock=clock)
    config = settings(VIP1, VIP2, mode="active-active", failback=True, hold=30.0)
    a, b = ready(node("a", 200), 2, vips=(VIP1, VIP2)), ready(node("b", 100), 2)
    v = view([a, b], [held(VIP1, "a", cause="manual"), held(VIP2, "a", cause="manual")], config)
    assert moves(run(v, memory.observe(v))) == {}
    clock.now += 29
    assert moves(run(v, memory.observe(v))) == {}
    clock.now += 1
    assert moves(run(v, memory.observe(v))) == {VIP2: ("b", "rebalance")}
