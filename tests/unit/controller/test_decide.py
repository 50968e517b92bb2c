"""The decision core, situation by situation."""

from __future__ import annotations

from dataclasses import replace

from controller.actions import (
    AnswerRequest,
    AssignVip,
    Decision,
    DeleteRequest,
    ReleaseVip,
    RestoreVip,
    WriteSettings,
)
from controller.decide import Policy, decide
from haproxy_py.cluster.records import Event, Move, RequestResult
from tests.unit.controller.views import (
    NOW,
    VIP1,
    VIP2,
    VIP3,
    VIP4,
    held,
    node,
    request,
    settings,
    view,
)

POLICY = Policy(release_timeout=5.0, request_history=2, controller="c1")


def run(v, now: float = NOW) -> Decision:
    return decide(v, now, POLICY)


def assigns(d: Decision) -> dict[str, str]:
    return {a.vip: a.node for a in d.actions if isinstance(a, AssignVip)}


def releases(d: Decision) -> dict[str, str | None]:
    return {a.vip: a.move_to for a in d.actions if isinstance(a, ReleaseVip)}


def answer(d: Decision) -> RequestResult:
    (result,) = [a.request.result for a in d.actions if isinstance(a, AnswerRequest)]
    assert result is not None
    return result


class TestActiveStandby:
    def test_unowned_vips_go_together_to_the_highest_priority_node(self) -> None:
        """Fresh cluster: every VIP of the group lands on the best node, under its lease."""
        v = view([node("a", 100), node("b", 150)], config=settings(VIP1, VIP2))
        d = run(v)
        assert assigns(d) == {VIP1: "b", VIP2: "b"}
        assert all(a.lease == v.nodes["b"].lease for a in d.actions if isinstance(a, AssignVip))
        assert all(a.cause == "initial" for a in d.actions if isinstance(a, AssignVip))

    def test_equal_priority_breaks_ties_by_name(self) -> None:
        """Every controller computes the same owner from the same view."""
        assert assigns(run(view([node("b"), node("a")]))) == {VIP1: "a"}

    def test_nothing_to_do_when_settled(self) -> None:
        """A held VIP on a healthy node stays; the reason says so."""
        d = run(view([node("a"), node("b")], [held(VIP1, "a")]))
        assert d.actions == ()
        assert "nothing to do" in d.reason and "a" in d.reason

    def test_recovered_better_node_does_not_preempt_without_failback(self) -> None:
        """No preemption by default: a higher priority node does not take the VIP back."""
        d = run(view([node("a", 200), node("b", 100)], [held(VIP1, "b")]))
        assert d.actions == ()

    def test_failback_waits_for_the_hold_then_moves_gracefully(self) -> None:
        """With failback, the better node gets the VIP only after failback_hold of stable health."""
        config = settings(VIP1, failback=True, hold=30)
        fresh = view([node("a", 200, since=NOW - 10), node("b", 100)], [held(VIP1, "b")], config)
        assert run(fresh).actions == ()
        stable = view([node("a", 200, since=NOW - 31), node("b", 100)], [held(VIP1, "b")], config)
        d = run(stable)
        assert releases(d) == {VIP1: "a"}
        assert assigns(d) == {}  # never in the same breath as the release
        assert [a.cause for a in d.actions if isinstance(a, ReleaseVip)] == ["failback"]

    def test_failback_leaves_a_manual_placement_alone(self) -> None:
        """An operator's move is not undone by failback."""
        config = settings(VIP1, failback=True, hold=0)
        v = view([node("a", 200), node("b", 100)], [held(VIP1, "b", cause="manual")], config)
        assert run(v).actions == ()

    def test_lost_owner_vip_goes_to_the_next_best_node(self) -> None:
        """Owner's lease expired (key gone): the best survivor gets it, cause `node lost`."""
        last = Event(seq=1, time=NOW - 60, vip=VIP1, source=None, target="a", cause="initial")
        v = view([node("b", 100), node("c", 90)], events=[last])
        d = run(v)
        assert assigns(d) == {VIP1: "b"}
        (action,) = d.actions
        assert isinstance(action, AssignVip)
        assert (action.source, action.cause) == ("a", "node lost")

    def test_unhealthy_owner_is_asked_to_release(self) -> None:
        """If the agent did not drop it itself, the controller releases the VIP of a sick proxy."""
        v = view([node("a", healthy=False), node("b")], [held(VIP1, "a")])
        d = run(v)
        assert releases(d) == {VIP1: "b"}

    def test_unhealthy_owner_keeps_it_when_nobody_else_could_take_it(self) -> None:
        v = view([node("a", healthy=False)], [held(VIP1, "a")])
        assert run(v).actions == ()

    def test_no_healthy_node_leaves_the_vip_unowned_and_says_why(self) -> None:
        d = run(view([node("a", healthy=False)]))
        assert d.actions == ()
        assert "no healthy node" in d.reason

    def test_drained_nodes_get_nothing(self) -> None:
        v = view([node("a", 200), node("b")], config=settings(VIP1, drained=("a",)))
        assert assigns(run(v)) == {VIP1: "b"}

    def test_a_node_registered_without_a_lease_gets_nothing(self) -> None:
        """A VIP key is bound to its owner's lease; without one it would never expire."""
        v = view([replace(node("a", 200), lease=0), node("b")])
        assert assigns(run(v)) == {VIP1: "b"}

    def test_partly_assigned_group_completes_on_the_same_node(self) -> None:
        """A VIP added to the config joins the node that holds the group."""
        v = view([node("a", 200), node("b")], [held(VIP1, "b")], settings(VIP1, VIP2))
        assert assigns(run(v)) == {VIP2: "b"}

    def test_an_unreadable_vip_key_is_never_assigned_over(self) -> None:
        v = view([node("a")], junk_vips=(VIP1,))
        assert assigns(run(v)) == {}

    def test_vip_removed_from_the_config_is_released(self) -> None:
        v = view([node("a")], [held(VIP1, "a"), held(VIP2, "a")], settings(VIP1))
        assert releases(run(v)) == {VIP2: None}


class TestActiveActive:
    def test_vips_spread_evenly_in_preference_order(self) -> None:
        config = settings(VIP1, VIP2, VIP3, VIP4, mode="active-active")
        d = run(view([node("a", 100), node("b", 200), node("c", 100)], config=config))
        placed = assigns(d)
        assert placed == {VIP1: "b", VIP2: "a", VIP3: "c", VIP4: "b"}

    def test_a_lost_nodes_vips_go_to_the_survivors(self) -> None:
        config = settings(VIP1, VIP2, VIP3, VIP4, mode="active-active")
        v = view([node("a"), node("c")], [held(VIP1, "a"), held(VIP3, "c")], config)
        placed = assigns(run(v))
        assert sorted(placed) == [VIP2, VIP4]
        assert sorted(placed.values()) == ["a", "c"]

    def test_recovered_node_gets_nothing_without_failback(self) -> None:
        config = settings(VIP1, VIP2, mode="active-active")
        v = view([node("a"), node("b")], [held(VIP1, "a"), held(VIP2, "a")], config)
        assert run(v).actions == ()

    def test_rebalance_with_failback_moves_one_vip_after_the_hold(self) -> None:
        config = settings(VIP1, VIP2, VIP3, mode="active-active", failback=True, hold=30)
        vips = [held(VIP1, "a"), held(VIP2, "a"), held(VIP3, "a")]
        early = view([node("a"), node("b", since=NOW - 5)], vips, config)
        assert run(early).actions == ()
        late = view([node("a"), node("b", since=NOW - 40)], vips, config)
        assert releases(run(late)) == {VIP3: "b"}

    def test_balanced_cluster_is_left_alone(self) -> None:
        config = settings(VIP1, VIP2, VIP3, mode="active-active", failback=True, hold=0)
        vips = [held(VIP1, "a"), held(VIP2, "a"), held(VIP3, "b")]
        assert run(view([node("a"), node("b")], vips, config)).actions == ()


class TestPause:
    def test_paused_cluster_does_not_fail_over(self) -> None:
        v = view([node("b")], config=settings(VIP1, paused=True))
        d = run(v)
        assert d.actions == ()
        assert "paused" in d.reason

    def test_pause_and_resume_requests_flip_the_setting(self) -> None:
        d = run(view([node("a")], [held(VIP1, "a")], requests=[request("pause")]))
        writes = [a for a in d.actions if isinstance(a, WriteSettings)]
        assert [w.settings.paused for w in writes] == [True]
        assert answer(d).status == "done"
        v = view([node("a")], [held(VIP1, "a")], settings(VIP1, paused=True), [request("resume")])
        d = run(v)
        assert [a.settings.paused for a in d.actions if isinstance(a, WriteSettings)] == [False]

    def test_pause_when_paused_is_done_without_a_write(self) -> None:
        v = view([node("a")], config=settings(VIP1, paused=True), requests=[request("pause")])
        d = run(v)
        assert not [a for a in d.actions if isinstance(a, WriteSettings)]
        assert "already" in answer(d).message


class TestMoveRequests:
    def test_move_to_a_named_node_releases_first(self) -> None:
        v = view([node("a"), node("b")], [held(VIP1, "a")], requests=[request("move", VIP1, "b")])
        d = run(v)
        assert releases(d) == {VIP1: "b"}
        assert assigns(d) == {}
        result = answer(d)
        assert result.status == "running"
        assert result.moves == (Move(VIP1, "a", "b"),)
        (release,) = [a for a in d.actions if isinstance(a, ReleaseVip)]
        assert (release.request, release.cause, release.mod_revision) == ("r1", "manual", 10)
        kinds = [type(a) for a in d.actions]
        # The target is on record before the release: a leader dying in between loses nothing.
        assert kinds.index(AnswerRequest) < kinds.index(ReleaseVip)

    def test_a_release_that_never_landed_after_the_answer_is_asked_again(self) -> None:
        running = RequestResult("running", "", started=NOW - 1, moves=(Move(VIP1, "a", "b"),))
        r = replace(request("move", VIP1, "b"), result=running)
        d = run(view([node("a", 200), node("b", 100)], [held(VIP1, "a")], requests=[r]))
        assert releases(d) == {VIP1: "b"}
        assert assigns(d) == {}
        assert not [a for a in d.actions if isinstance(a, AnswerRequest)]
        # the target is gone meanwhile: the VIP stays where it is and the request fails
        d = run(view([node("a", 200)], [held(VIP1, "a")], requests=[r]))
        assert releases(d) == {} and assigns(d) == {}
        result = answer(d)
        assert result.status == "failed" and "b became unavailable" in result.message

    def test_after_the_acknowledgement_the_target_gets_it(self) -> None:
        running = RequestResult("running", "", started=NOW - 0.05, moves=(Move(VIP1, "a", "b"),))
        r = replace(request("move", VIP1, "b"), result=running)
        d = run(view([node("a"), node("b")], [], requests=[r]))
        (action,) = [a for a in d.actions if isinstance(a, AssignVip)]
        assert (action.node, action.cause, action.request) == ("b", "manual", "r1")
        assert not [a for a in d.actions if isinstance(a, AnswerRequest)]

    def test_move_is_done_once_the_target_holds_it_with_the_gap(self) -> None:
        running = RequestResult("running", "", started=NOW - 0.05, moves=(Move(VIP1, "a", "b"),))
        r = replace(request("move", VIP1, "b"), result=running)
        ev = Event(
            seq=2,
            time=NOW,
            vip=VIP1,
            source="a",
            target="b",
            cause="manual",
            gap_ms=7.5,
            request="r1",
        )
        d = run(
            view(
                [node("a"), node("b")],
                [held(VIP1, "b", cause="manual", request="r1")],
                requests=[r],
                events=[ev],
            )
        )
        result = answer(d)
        assert result.status == "done"
        assert result.gap_ms == 7.5
        assert result.duration_ms is not None and abs(result.duration_ms - 50) < 1

    def test_move_without_target_picks_the_best_other_node(self) -> None:
        nodes = [node("a", 200), node("b", 100), node("c", 150)]
        d = run(view(nodes, [held(VIP1, "a")], requests=[request("move")]))
        assert releases(d) == {VIP1: "c"}

    def test_refusals_name_the_problem(self) -> None:
        nodes = [node("a"), node("b", healthy=False), node("c")]
        config = settings(VIP1, drained=("c",))
        cases = {
            request("move", VIP1, "zz"): "unknown node zz",
            request("move", VIP1, "b"): "unhealthy",
            request("move", VIP1, "c"): "drained",
            request("move", "10.9.9.9", "a"): "unknown VIP",
        }
        for r, text in cases.items():
            result = answer(run(view(nodes, [held(VIP1, "a")], config, [r])))
            assert result.status == "refused" and text in result.message, (r, result)

    def test_move_with_no_other_healthy_node_is_refused(self) -> None:
        d = run(
            view(
                [node("a"), node("b", healthy=False)], [held(VIP1, "a")], requests=[request("move")]
            )
        )
        assert answer(d).status == "refused"
        assert releases(d) == {}

    def test_moves_still_run_while_paused(self) -> None:
        config = settings(VIP1, paused=True)
        d = run(
            view([node("a"), node("b")], [held(VIP1, "a")], config, [request("move", VIP1, "b")])
        )
        assert releases(d) == {VIP1: "b"}

    def test_unacknowledged_release_is_restored_and_the_request_fails(self) -> None:
        running = RequestResult("running", "", started=NOW - 6, moves=(Move(VIP1, "a", "b"),))
        r = replace(request("move", VIP1, "b"), result=running)
        stuck = held(VIP1, "a", "releasing", move_to="b", request="r1", releasing_since=NOW - 6)
        d = run(view([node("a"), node("b")], [stuck], requests=[r]))
        assert [a.vip for a in d.actions if isinstance(a, RestoreVip)] == [VIP1]
        result = answer(d)
        assert result.status == "failed" and "did not release" in result.message

    def test_second_move_waits_for_the_first(self) -> None:
        running = RequestResult("running", "", started=NOW, moves=(Move(VIP1, "a", "b"),))
        first = replace(request("move", VIP1, "b"), result=running)
        second = replace(request("move", VIP1, "a", rid="r2"), created=NOW)
        releasing = held(VIP1, "a", "releasing", move_to="b", request="r1", releasing_since=NOW)
        d = run(view([node("a"), node("b")], [releasing], requests=[first, second]))
        assert d.actions == ()


class TestDrain:
    def test_drain_moves_the_nodes_vips_away_and_keeps_them_away(self) -> None:
        d = run(
            view(
                [node("a", 200), node("b")],
                [held(VIP1, "a")],
                requests=[request("drain", node_name="a")],
            )
        )
        (write,) = [a for a in d.actions if isinstance(a, WriteSettings)]
        assert write.settings.drained == ("a",)
        assert releases(d) == {VIP1: "b"}
        assert answer(d).status == "running"
        kinds = [type(a) for a in d.actions]
        assert kinds.index(AnswerRequest) < kinds.index(ReleaseVip)

    def test_drain_of_the_last_healthy_node_is_refused(self) -> None:
        d = run(
            view(
                [node("a"), node("b", healthy=False)],
                [held(VIP1, "a")],
                requests=[request("drain", node_name="a")],
            )
        )
        assert answer(d).status == "refused"
        assert not [a for a in d.actions if isinstance(a, WriteSettings | ReleaseVip)]

    def test_drain_waits_for_an_assignment_an_earlier_request_made_this_cycle(self) -> None:
        move = replace(request("move", rid="r0"), created=NOW - 2)
        drain = request("drain", node_name="c")
        d = run(view([node("a", healthy=False), node("c")], [], requests=[move, drain]))
        assert [(a.vip, a.node) for a in d.actions if isinstance(a, AssignVip)] == [(VIP1, "c")]
        assert not [a for a in d.actions if isinstance(a, WriteSettings)]
        assert [a.request.id for a in d.actions if isinstance(a, AnswerRequest)] == ["r0"]

    def test_drain_of_an_unknown_node_is_refused(self) -> None:
        d = run(view([node("a")], [held(VIP1, "a")], requests=[request("drain", node_name="x")]))
        assert "unknown node x" in answer(d).message

    def test_undrain(self) -> None:
        v = view(
            [node("a")],
            [held(VIP1, "a")],
            settings(VIP1, drained=("b",)),
            [request("undrain", node_name="b")],
        )
        d = run(v)
        assert [a.settings.drained for a in d.actions if isinstance(a, WriteSettings)] == [()]
        assert answer(d).status == "done"


class TestHousekeeping:
    def test_old_answered_requests_are_pruned_beyond_the_history(self) -> None:
        done = RequestResult("done", "ok", started=NOW, finished=NOW)
        rs = [
            replace(request("pause", rid=f"r{i}"), created=NOW - 10 + i, result=done)
            for i in range(4)
        ]
        d = run(view([node("a")], [held(VIP1, "a")], requests=rs))
        assert [a.request_id for a in d.actions if isinstance(a, DeleteRequest)] == ["r0", "r1"]

    def test_missing_config_means_wait(self) -> None:
        v = replace(view([node("a")]), settings=None)
        assert run(v).actions == ()
