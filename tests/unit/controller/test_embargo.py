"""The embargo shared through etcd (`controller.embargo`): whichever controller revokes, and
whichever leads next, no VIP of a revoked lease is assigned before its fence has fallen."""

from __future__ import annotations

from dataclasses import replace

from hypothesis import given
from hypothesis import strategies as st

from controller.actions import AnswerRequest, AssignVip, ClearVip
from controller.decide import Policy, decide
from controller.embargo import Embargo
from haproxy_py.cluster.records import ClusterView
from tests.unit.controller.views import VIP1, VIP2, held, lease_of, node, request, settings, view

WAIT = 1.3


def owned(revoked: bool, marked: bool) -> ClusterView:
    """node a holds VIP1 (and b VIP2); a's lease revoked or not, marked or not."""
    nodes = [node("b")] if revoked else [node("a"), node("b")]
    v = view(nodes, [held(VIP1, "a"), held(VIP2, "b")], settings(VIP1, VIP2))
    if marked:
        v = replace(v, revoked={lease_of("a"): WAIT})
    return v.vacate([VIP1]) if revoked else v


def test_a_marked_lease_seen_gone_holds_its_vips_for_the_wait_from_first_sight() -> None:
    e = Embargo(WAIT)
    e.observe(owned(revoked=True, marked=True), 10.0)
    e.observe(owned(revoked=True, marked=True), 10.5)  # a later read does not restart it
    later = owned(revoked=True, marked=True)
    assert e.held(later, 11.29) == {VIP1}
    assert VIP1 in e.guard(later, 11.29).occupied
    assert e.held(later, 11.3) == frozenset() and e.guard(later, 11.3) is later
    assert e.left(10.3) == WAIT - 0.3


def test_the_leader_neither_assigns_nor_clears_an_embargoed_key() -> None:
    """Clearing it would hide it from a controller that leads next, before the fence fell."""
    e, v = Embargo(WAIT), owned(revoked=True, marked=True)
    policy = Policy(release_timeout=5.0, request_history=10, controller="c1")
    during = decide(e.guard(v, 10.0), 0.0, policy)
    assert not any(isinstance(x, AssignVip | ClearVip) for x in during.actions), during
    after = decide(e.guard(v, 10.0 + WAIT), 0.0, policy)
    assert any(isinstance(x, AssignVip) and x.vip == VIP1 for x in after.actions), after


def test_a_move_of_an_embargoed_vip_waits_for_the_embargo_instead_of_being_refused() -> None:
    """The VIP is being moved already: its key is not unreadable, and the operator's
    `hactl failover` goes on once the embargo ends."""
    e, v = Embargo(WAIT), owned(revoked=True, marked=True)
    v = replace(v, requests=(request("move", vip=VIP1),), nodes={**v.nodes, "c": node("c")})
    policy = Policy(release_timeout=5.0, request_history=10, controller="c1")
    during = decide(e.guard(v, 10.0), 0.0, policy)
    assert not any(isinstance(x, AnswerRequest) for x in during.actions), during
    after = decide(e.guard(v, 10.0 + WAIT), 0.0, policy)
    answers = [x.request.result for x in after.actions if isinstance(x, AnswerRequest)]
    assert answers and all(r is not None and r.status != "refused" for r in answers), after


def test_a_lease_that_ended_without_a_marker_holds_nothing() -> None:
    e = Embargo(WAIT)
    e.observe(owned(revoked=True, marked=False), 10.0)
    assert e.held(owned(revoked=True, marked=False), 10.0) == frozenset() and e.left(10.0) == 0


def test_a_marker_before_the_revoke_holds_nothing_yet_and_the_clock_starts_at_the_revoke() -> None:
    e = Embargo(WAIT)
    e.observe(owned(revoked=False, marked=True), 10.0)  # marked, lease still there
    e.observe(owned(revoked=True, marked=True), 12.0)
    assert e.held(owned(revoked=True, marked=True), 13.29) == {VIP1}


def test_the_longer_of_the_markers_and_our_own_wait_counts() -> None:
    e = Embargo(0.0)  # a controller that does not know the agents' timing
    e.observe(owned(revoked=True, marked=True), 10.0)
    assert e.held(owned(revoked=True, marked=True), 11.0) == {VIP1}


def test_forgets_leases_no_longer_vacated() -> None:
    e = Embargo(WAIT)
    e.observe(owned(revoked=True, marked=True), 10.0)
    e.observe(owned(revoked=False, marked=False), 10.1)
    assert e.until == {}


# --- several controllers, any of them revoking and any leading next -----------------------

reads = st.lists(st.floats(0.0, 5.0), min_size=1, max_size=6)


def assign_time(revoke: float, marker: float, reads_of: list[list[float]], leader: int) -> float:
    """When `leader` may first assign VIP1 (infinity: never), given the revoke
    applied at `revoke`, the marker written at `marker`, and each controller's read times
    (each sees the state as of its read; every controller observes, only `leader` decides)."""
    e = Embargo(WAIT)
    for t in sorted(reads_of[leader]):
        v = owned(revoked=t >= revoke, marked=t >= marker)
        e.observe(v, t)
        if t >= revoke and not e.held(v, t):
            return t
    return float("inf")


@given(
    revoke=st.floats(0.0, 3.0),
    before=st.floats(0.0, 1.0),
    reads_of=st.lists(reads, min_size=2, max_size=4),
    data=st.data(),
)
def test_no_controller_assigns_before_the_fence_fell(
    revoke: float, before: float, reads_of: list[list[float]], data: st.DataObject
) -> None:
    """The marker is written before the revoke (`controller.revoke`): every read that shows
    the lease gone shows the marker, so no controller, leading next, can assign earlier than
    `WAIT` after the revoke, wherever its reads fall."""
    leader = data.draw(st.integers(0, len(reads_of) - 1))
    assert assign_time(revoke, revoke - before, reads_of, leader) >= revoke + WAIT


def test_a_marker_written_after_the_revoke_would_let_a_controller_assign_early() -> None:
    """The order matters: a read between the revoke and a late marker sees no embargo."""
    assert assign_time(1.0, 1.5, [[0.5], [1.2]], leader=1) < 1.0 + WAIT
