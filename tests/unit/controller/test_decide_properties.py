"""Properties of the decision core over generated clusters (hypothesis)."""

from __future__ import annotations

from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from controller.actions import (
    Action,
    AnswerRequest,
    AssignVip,
    DeleteRequest,
    ReleaseVip,
    RestoreVip,
    WriteSettings,
)
from controller.decide import Policy, decide
from haproxy_py.cluster.records import (
    ClusterPolicy,
    ClusterView,
    Event,
    NodeRecord,
    Request,
    VipAssignment,
)
from tests.unit.controller.views import NOW, VIP1, VIP2, VIP3, VIP4

NAMES = ["a", "b", "c", "d"]
VIPS = [VIP1, VIP2, VIP3, VIP4]
POLICY = Policy(release_timeout=5.0, request_history=3, controller="c1")

nodes_st = st.dictionaries(
    st.sampled_from(NAMES),
    st.tuples(
        st.integers(0, 3).map(lambda p: p * 50),
        st.booleans(),
        st.floats(0, 120),
    ),
    max_size=4,
).map(
    lambda d: {
        name: NodeRecord(
            name=name,
            priority=prio,
            healthy=healthy,
            healthy_since=NOW - age if healthy else None,
            lease=100 + i,
        )
        for i, (name, (prio, healthy, age)) in enumerate(sorted(d.items()))
    }
)

settings_st = st.builds(
    ClusterPolicy,
    mode=st.sampled_from(["active-standby", "active-active"]),
    vips=st.lists(st.sampled_from(VIPS), min_size=1, max_size=4, unique=True).map(tuple),
    failback=st.booleans(),
    failback_hold=st.sampled_from([0.0, 30.0, 60.0]),
    paused=st.booleans(),
    drained=st.lists(st.sampled_from(NAMES), max_size=2, unique=True).map(tuple),
    mod_revision=st.just(7),
)

assignment_st = st.tuples(
    st.sampled_from([*NAMES, "gone"]),
    st.sampled_from(["assigned", "releasing"]),
    st.sampled_from(["initial", "manual", "node lost"]),
    st.floats(0, 10),
)

requests_st = st.lists(
    st.tuples(
        st.sampled_from(["move", "pause", "resume", "drain", "undrain"]),
        st.one_of(st.none(), st.sampled_from(VIPS)),
        st.one_of(st.none(), st.sampled_from([*NAMES, "zz"])),
    ),
    max_size=2,
)


@st.composite
def views(draw: st.DrawFn) -> ClusterView:
    nodes = draw(nodes_st)
    config = draw(settings_st)
    vips: dict[str, VipAssignment] = {}
    for i, vip in enumerate(VIPS):
        if draw(st.booleans()):
            owner, state, cause, age = draw(assignment_st)
            vips[vip] = VipAssignment(
                vip=vip,
                node=owner,
                epoch=i,
                since=NOW - 100,
                state=state,
                cause=cause,
                move_to=draw(st.one_of(st.none(), st.sampled_from(NAMES))),
                releasing_since=NOW - age if state == "releasing" else None,
                lease=100,
                mod_revision=20 + i,
            )
    junk = draw(st.lists(st.sampled_from([v for v in VIPS if v not in vips] or [VIP1]), max_size=1))
    junk = [v for v in junk if v not in vips]
    requests = tuple(
        Request(
            id=f"r{i}",
            kind=kind,
            vip=vip,
            target=target if kind == "move" else None,
            node=target if kind in ("drain", "undrain") else None,
            created=NOW - 10 + i,
            mod_revision=40 + i,
        )
        for i, (kind, vip, target) in enumerate(draw(requests_st))
    )
    return ClusterView(
        cluster="p",
        revision=99,
        nodes=nodes,
        vips=vips,
        occupied=frozenset([*vips, *junk]),
        settings=config,
        requests=requests,
    )


def final_settings(v: ClusterView, actions: tuple[Action, ...]) -> ClusterPolicy:
    assert v.settings is not None
    writes = [a.settings for a in actions if isinstance(a, WriteSettings)]
    return writes[-1] if writes else v.settings


@settings(max_examples=300, deadline=None)
@given(views())
def test_never_two_owners_and_only_eligible_targets(v: ClusterView) -> None:
    """Assignments go only to absent keys, once per VIP, on registered healthy undrained nodes."""
    d = decide(v, NOW, POLICY)
    assigned = [a for a in d.actions if isinstance(a, AssignVip)]
    assert len({a.vip for a in assigned}) == len(assigned)
    drained = set(final_settings(v, d.actions).drained)
    for a in assigned:
        assert a.vip not in v.occupied, a
        target = v.nodes[a.node]
        assert target.healthy and a.node not in drained, a
        assert a.lease == target.lease


@settings(max_examples=300, deadline=None)
@given(views())
def test_a_planned_move_never_assigns_before_release(v: ClusterView) -> None:
    """Only assigned VIPs are released (at their revision), never assigned in the same step."""
    d = decide(v, NOW, POLICY)
    released = [a for a in d.actions if isinstance(a, ReleaseVip)]
    assigned = {a.vip for a in d.actions if isinstance(a, AssignVip)}
    for r in released:
        current = v.vips[r.vip]
        assert current.state == "assigned" and current.node == r.node
        assert r.mod_revision == current.mod_revision
        assert r.vip not in assigned
    touched = [a.vip for a in d.actions if isinstance(a, AssignVip | ReleaseVip | RestoreVip)]
    assert len(touched) == len(set(touched))


@settings(max_examples=300, deadline=None)
@given(views())
def test_nothing_changes_while_paused_except_requests(v: ClusterView) -> None:
    """Paused with no requests: no VIP is assigned or released (stuck releases may be restored)."""
    assert v.settings is not None
    v = replace(v, settings=replace(v.settings, paused=True), requests=())
    d = decide(v, NOW, POLICY)
    assert all(isinstance(a, RestoreVip) for a in d.actions), d


@settings(max_examples=300, deadline=None)
@given(views())
def test_failback_rules(v: ClusterView) -> None:
    """Without failback no healthy owner is moved by itself; with it, only to a stable node."""
    assert v.settings is not None
    d = decide(v, NOW, replace(POLICY))
    config = v.settings
    for r in (a for a in d.actions if isinstance(a, ReleaseVip) and a.request is None):
        if r.cause in ("failback", "rebalance"):
            if config.mode == "active-active" or r.cause == "failback":
                assert config.failback, r
            if r.cause == "failback":
                target = v.nodes[r.move_to or ""]
                assert target.healthy_since is not None
                assert NOW - target.healthy_since >= config.failback_hold


def apply(v: ClusterView, actions: tuple[Action, ...], now: float) -> ClusterView:
    """A faithful model of the loop + agents: writes land, releases are acknowledged at once."""
    vips = dict(v.vips)
    occupied = set(v.occupied)
    requests = {r.id: r for r in v.requests}
    events = list(v.events)
    config = v.settings
    epoch = v.epoch
    for action in actions:
        if isinstance(action, AssignVip):
            assert action.vip not in occupied
            epoch += 1
            vips[action.vip] = VipAssignment(
                action.vip, action.node, epoch, now, cause=action.cause, request=action.request
            )
            occupied.add(action.vip)
            events.append(
                Event(
                    epoch,
                    now,
                    action.vip,
                    action.source,
                    action.node,
                    action.cause,
                    1.0,
                    action.request,
                )
            )
        elif isinstance(action, ReleaseVip):  # the agent acknowledges by deleting the key
            vips.pop(action.vip)
            occupied.discard(action.vip)
        elif isinstance(action, RestoreVip):
            vips[action.vip] = replace(vips[action.vip], state="assigned", move_to=None)
        elif isinstance(action, WriteSettings):
            config = action.settings
        elif isinstance(action, AnswerRequest):
            requests[action.request.id] = action.request
        elif isinstance(action, DeleteRequest):
            requests.pop(action.request_id)
    return replace(
        v,
        vips=vips,
        occupied=frozenset(occupied),
        settings=config,
        requests=tuple(sorted(requests.values(), key=lambda r: (r.created, r.id))),
        events=tuple(events),
        epoch=epoch,
    )


@settings(max_examples=300, deadline=None)
@given(views())
def test_the_loop_settles_and_every_vip_ends_on_an_eligible_node(v: ClusterView) -> None:
    """Repeating decide on its own outcome reaches a fixpoint: no flapping, no stranded VIP."""
    # Live agents acknowledge releases; keys of unregistered nodes have expired with their lease.
    live = {k: a for k, a in v.vips.items() if a.node in v.nodes and a.state == "assigned"}
    v = replace(v, vips=live, occupied=frozenset(live))
    now = NOW
    for _ in range(12):
        d = decide(v, now, POLICY)
        if not d.actions:
            break
        v = apply(v, d.actions, now)
        now += 0.01
    else:
        raise AssertionError(f"no fixpoint: {d.reason}")
    assert v.settings is not None
    assert all(not r.pending for r in v.requests), v.requests
    config = v.settings
    usable = [n for n in v.nodes.values() if n.healthy and n.name not in config.drained]
    if usable and not config.paused:
        for vip in config.vips:
            owner = v.owner(vip)
            assert owner is not None, (vip, d.reason)
        if config.mode == "active-standby":
            assert len({v.owner(vip) for vip in config.vips}) == 1
