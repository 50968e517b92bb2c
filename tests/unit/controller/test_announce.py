"""BGP mode's announcer choice: every node that can serve announces; a shared backend outage
withdraws nobody; drains, stops and allow-lists are honoured; maintenance freezes the answer."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from controller.announce import Policy, candidates, kept, plan
from haproxy_py.cluster.records import ClusterPolicy, NodeRecord

from .views import VIP1, VIP2, node

VIPS = (VIP1, VIP2)
SETTINGS = ClusterPolicy(vips=VIPS)


def ready(name: str, up: int = 2, pools: int = 2, **changes: object) -> NodeRecord:
    return replace(node(name), ready=up, pools=pools, **changes)


def cluster(*records: NodeRecord) -> dict[str, NodeRecord]:
    return {r.name: r for r in records}


DEFAULT = Policy()


def announcers(
    nodes: dict[str, NodeRecord], policy: Policy = DEFAULT, **settings: object
) -> Mapping[str, frozenset[str]]:
    return plan(VIPS, nodes, replace(SETTINGS, **settings), policy, {}).nodes


def test_every_fully_ready_node_announces_every_vip() -> None:
    nodes = cluster(ready("node1"), ready("node2"), ready("node3"))
    assert announcers(nodes) == {v: {"node1", "node2", "node3"} for v in VIPS}


def test_a_node_with_a_pool_down_stops_announcing_while_others_have_all() -> None:
    nodes = cluster(ready("node1"), ready("node2", up=1))
    assert announcers(nodes)[VIP1] == {"node1"}


def test_a_backend_outage_shared_by_every_node_withdraws_nobody() -> None:
    nodes = cluster(ready("node1", up=0), ready("node2", up=0))
    out = plan(VIPS, nodes, SETTINGS, Policy(), {})
    assert out.nodes[VIP1] == {"node1", "node2"}
    assert "503" in out.reasons[VIP1]


def test_with_no_node_fully_ready_the_best_score_announces() -> None:
    nodes = cluster(ready("node1", up=1), ready("node2", up=0))
    assert announcers(nodes)[VIP1] == {"node1"}


def test_dead_stopping_and_drained_nodes_never_announce() -> None:
    nodes = cluster(
        ready("node1"),
        ready("node2", healthy=False),
        ready("node3", stopping=True),
        ready("node4"),
    )
    assert announcers(nodes, drained=("node4",))[VIP1] == {"node1"}


def test_the_minimum_adds_the_most_ready_then_highest_priority_nodes() -> None:
    nodes = cluster(
        ready("node1"),
        ready("node2", up=1, priority=50),
        ready("node3", up=1, priority=150),
        ready("node4", up=0, priority=200),
    )
    assert announcers(nodes, Policy(min_announcers=2))[VIP1] == {"node1", "node3"}


def test_a_vip_allowed_on_some_nodes_is_announced_only_there() -> None:
    nodes = cluster(ready("node1"), ready("node2"))
    policy = Policy(allowed={VIP2: frozenset({"node2"})})
    assert announcers(nodes, policy) == {VIP1: {"node1", "node2"}, VIP2: {"node2"}}


def test_nobody_can_announce_when_no_node_is_live() -> None:
    out = plan(VIPS, cluster(ready("node1", healthy=False)), SETTINGS, Policy(), {})
    assert out.nodes[VIP1] == frozenset()
    assert "nobody" in out.reasons[VIP1]


def test_paused_keeps_the_previous_answer() -> None:
    previous = {VIP1: frozenset({"node9"})}
    out = plan(VIPS, cluster(ready("node1")), replace(SETTINGS, paused=True), Policy(), previous)
    assert out.nodes == {VIP1: {"node9"}, VIP2: frozenset()}


records = st.builds(
    lambda i, healthy, stopping, up, pools, priority: replace(
        node(f"node{i}", priority=priority, healthy=healthy),
        stopping=stopping,
        ready=min(up, pools),
        pools=pools,
    ),
    st.integers(1, 6),
    st.booleans(),
    st.booleans(),
    st.integers(0, 3),
    st.integers(0, 3),
    st.integers(1, 255),
)


@hypothesis_settings(deadline=None)  # a loaded machine must not fail a pure property
@given(
    st.lists(records, max_size=6),
    st.integers(0, 4),
    st.sets(st.sampled_from([f"node{i}" for i in range(1, 7)])),
)
def test_invariants_hold_for_any_cluster(
    recs: list[NodeRecord], minimum: int, drained: set[str]
) -> None:
    nodes = cluster(*recs)
    settings = replace(SETTINGS, drained=tuple(sorted(drained)))
    policy = Policy(min_announcers=minimum)
    out = plan(VIPS, nodes, settings, policy, {})
    pool = {n.name for n in candidates(VIP1, nodes, settings, policy)}
    chosen = out.nodes[VIP1]
    assert chosen <= pool  # announcers are candidates
    assert bool(chosen) == bool(pool)  # never no route while a candidate can serve
    assert len(chosen) >= min(minimum, len(pool))
    full = {n for n in pool if nodes[n].pools and nodes[n].ready == nodes[n].pools}
    if full:  # with a fully ready node, the others announce only to reach the minimum
        assert len(chosen - full) <= max(0, minimum - len(full))
    assert plan(VIPS, nodes, settings, policy, out.nodes) == out  # a fixpoint


def test_a_node_without_a_lease_keeps_what_rule_one_still_allows_it() -> None:
    settings = ClusterPolicy(mode="bgp", vips=(VIP1, VIP2))
    both = (VIP1, VIP2)
    assert kept("a", both, settings, Policy()) == both
    assert kept("a", both, replace(settings, vips=(VIP2,)), Policy()) == (VIP2,)
    assert kept("a", both, settings, Policy(allowed={VIP1: frozenset({"b"})})) == (VIP2,)
    assert kept("a", both, replace(settings, drained=("a",)), Policy()) == ()
    paused = replace(settings, drained=("a",), paused=True)
    assert kept("a", both, paused, Policy()) == both  # paused: the previous answer stands
