"""VIPs nobody holds although their key stays: the owner's acknowledgement in its node record,
or an owner whose lease is gone; the controller gives them on in one transaction."""

from __future__ import annotations

from dataclasses import replace

from controller.actions import AnswerRequest, AssignVip, ClearVip, ReleaseVip
from controller.decide import Policy, decide
from haproxy_py.cluster.records import Move, RequestResult
from tests.unit.controller.views import VIP1, held, node, request, settings, view

POLICY = Policy(release_timeout=5.0, request_history=10, controller="c1")


def test_an_acknowledged_release_is_given_to_its_target_replacing_the_key() -> None:
    a, b = node("a"), node("b")
    releasing = held(VIP1, "a", "releasing", move_to="b", request="r1", revision=40)
    acked = replace(a, released={VIP1: 40})
    result = RequestResult("running", "moving", started=0.0, moves=(Move(VIP1, "a", "b"),))
    move = replace(request("move", target="b"), result=result)
    v = view([acked, b], [releasing], requests=[move])
    assert v.acknowledged(VIP1) and v.free(VIP1) and not v.stale(VIP1)
    d = decide(v.vacate([VIP1]), 0.0, POLICY)
    (assign,) = [x for x in d.actions if isinstance(x, AssignVip)]
    assert (assign.node, assign.replaces, assign.source) == ("b", 40, "a")
    assert (assign.cause, assign.request) == ("manual", "r1")
    assert not any(isinstance(x, ClearVip) for x in d.actions)


def test_an_acknowledgement_of_an_older_revision_frees_nothing() -> None:
    acked = replace(node("a"), released={VIP1: 39})
    v = view([acked, node("b")], [held(VIP1, "a", revision=40)])
    assert not v.acknowledged(VIP1) and not v.free(VIP1)


def test_a_vacated_vip_nobody_can_take_is_cleared() -> None:
    sick = replace(node("a", healthy=False), released={VIP1: 40})
    v = view([sick], [held(VIP1, "a", revision=40)]).vacate([VIP1])
    d = decide(v, 0.0, POLICY)
    assert ClearVip(VIP1, 40) in d.actions
    assert not any(isinstance(x, AssignVip) for x in d.actions)


def test_an_owner_without_a_record_or_with_another_lease_makes_the_key_stale() -> None:
    ghost = held(VIP1, "ghost")
    assert view([node("a")], [ghost]).stale(VIP1)
    unleased = replace(held(VIP1, "a"), lease=0)
    assert view([node("a")], [unleased]).stale(VIP1)
    again = replace(node("a"), lease=4242)  # registered again under a new lease
    assert view([again], [held(VIP1, "a")]).stale(VIP1)
    assert not view([node("a")], [held(VIP1, "a")]).stale(VIP1)


def test_a_stale_vip_goes_to_a_healthy_node_in_one_transaction() -> None:
    v = view([node("b")], [held(VIP1, "ghost", revision=33)], settings(VIP1)).vacate([VIP1])
    d = decide(v, 0.0, POLICY)
    (assign,) = [x for x in d.actions if isinstance(x, AssignVip)]
    assert (assign.node, assign.replaces, assign.cause) == ("b", 33, "node lost")
    assert not any(isinstance(x, ReleaseVip | ClearVip) for x in d.actions)


def test_a_vip_given_back_to_the_node_that_held_it_is_returned() -> None:
    """Its lease revoked, the owner registered again: its clients are still connected there,
    so the VIP comes back as `returned`, which the agent takes over with no grace period."""
    again = replace(node("a"), lease=4242)
    v = view([again], [held(VIP1, "a", revision=33)], settings(VIP1)).vacate([VIP1])
    (assign,) = [x for x in decide(v, 0.0, POLICY).actions if isinstance(x, AssignVip)]
    assert (assign.node, assign.source, assign.cause) == ("a", "a", "returned")


def test_a_node_refusing_a_vip_is_passed_over() -> None:
    """A VIP outside a node's allow-list goes to another node, never back and forth."""
    refusing = replace(node("a", 200), refused=(VIP1,), released={VIP1: 40})
    v = view([refusing, node("b", 100)], [held(VIP1, "a", revision=40)]).vacate([VIP1])
    (assign,) = [x for x in decide(v, 0.0, POLICY).actions if isinstance(x, AssignVip)]
    assert assign.node == "b"
    alone = view([replace(node("a"), refused=(VIP1,))], config=settings(VIP1))
    d = decide(alone, 0.0, POLICY)
    assert not any(isinstance(x, AssignVip) for x in d.actions)
    assert "a refuses it" in d.reason


def test_a_move_to_a_node_that_refuses_the_vip_is_refused() -> None:
    refusing = replace(node("b"), refused=(VIP1,))
    v = view([node("a"), refusing], [held(VIP1, "a")], requests=[request("move", target="b")])
    (answer,) = [x for x in decide(v, 0.0, POLICY).actions if isinstance(x, AnswerRequest)]
    assert answer.request.result is not None and answer.request.result.status == "refused"
    assert answer.request.result.message == "b refuses 198.18.100.1 (not in its allowed_vips)"
