"""The controller against a real etcd, with in-test agent stand-ins."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

import pytest

from controller.actions import Action, AssignVip, ReleaseVip
from controller.election import Election
from controller.execute import Executor, Outcome
from haproxy_py.cluster import requestflow
from haproxy_py.cluster.intents import new_request_id
from haproxy_py.cluster.records import ClusterView, Request
from haproxy_py.cluster.store import Store, StoreUnavailable
from haproxy_py.hactl.errors import TimedOut
from haproxy_py.hactl.session import submit_and_wait
from tests.integration.cluster.helpers import (
    VIP1,
    VIP2,
    VIP3,
    Running,
    cluster_config,
    etcd_config,
    owned_by,
    scene,
    submit,
    view_where,
)
from tests.support.etcd import EtcdCluster
from tests.support.stand_in import StandInAgent
from tests.support.wait import eventually_async


class TestPlacement:
    async def test_first_assignment_bumps_the_epoch_and_logs_an_event(
        self, etcd: EtcdCluster
    ) -> None:
        cluster = cluster_config("p1", VIP1, VIP2)
        async with scene(etcd_config(etcd.endpoints), cluster, {"a": 100, "b": 200}) as (
            store,
            _agents,
            _ctl,
        ):
            view = await view_where(store, owned_by((VIP1, "b"), (VIP2, "b")))
            assert view.epoch == 2
            assert [(e.vip, e.target, e.cause) for e in view.events] == [
                (VIP1, "b", "initial"),
                (VIP2, "b", "initial"),
            ]
            assert view.vips[VIP1].lease == view.nodes["b"].lease
            assert view.settings is not None and view.settings.vips == (VIP1, VIP2)

    async def test_active_active_spreads_and_survivors_take_a_lost_nodes_vips(
        self, etcd: EtcdCluster
    ) -> None:
        cluster = cluster_config("p2", VIP1, VIP2, VIP3, mode="active-active")
        nodes = {"a": 100, "b": 100, "c": 100}
        async with scene(etcd_config(etcd.endpoints), cluster, nodes, ttl=1) as (store, agents, _):
            await view_where(store, owned_by((VIP1, "a"), (VIP2, "b"), (VIP3, "c")))
            await agents["b"].crash()
            view = await view_where(
                store,
                lambda v: "b" not in v.nodes and {v.owner(x) for x in cluster.vips} == {"a", "c"},
            )
            event = view.last_event(VIP2)
            assert event is not None and (event.source, event.cause) == ("b", "node lost")

    async def test_lease_expiry_moves_the_vip(self, etcd: EtcdCluster) -> None:
        async with scene(
            etcd_config(etcd.endpoints), cluster_config("p3"), {"a": 200, "b": 100}, ttl=1
        ) as (store, agents, _):
            await view_where(store, owned_by((VIP1, "a")))
            await agents["a"].crash()
            view = await view_where(store, owned_by((VIP1, "b")))
            event = view.last_event(VIP1)
            assert event is not None
            assert (event.source, event.target, event.cause) == ("a", "b", "node lost")
            assert event.gap_ms is not None and event.gap_ms >= 0

    async def test_unhealthy_proxy_hands_over(self, etcd: EtcdCluster) -> None:
        async with scene(
            etcd_config(etcd.endpoints), cluster_config("p4"), {"a": 200, "b": 100}
        ) as (store, agents, _):
            await view_where(store, owned_by((VIP1, "a")))
            await agents["a"].set_healthy(False)
            view = await view_where(store, owned_by((VIP1, "b")))
            event = view.last_event(VIP1)
            assert event is not None and event.cause == "proxy unhealthy"

    async def test_clean_agent_stop_moves_at_once(self, etcd: EtcdCluster) -> None:
        """A revoked lease is seen through the watch: far quicker than the TTL (10 s here)."""
        async with scene(
            etcd_config(etcd.endpoints), cluster_config("p5"), {"a": 200, "b": 100}, ttl=10
        ) as (store, agents, _):
            await view_where(store, owned_by((VIP1, "a")))
            started = time.monotonic()
            await agents["a"].stop()
            await view_where(store, owned_by((VIP1, "b")), within=8)
            assert time.monotonic() - started < 8


class TestRequests:
    async def test_planned_move_releases_then_assigns_and_reports_timing(
        self, etcd: EtcdCluster
    ) -> None:
        async with scene(
            etcd_config(etcd.endpoints), cluster_config("r1"), {"a": 200, "b": 100}
        ) as (store, agents, _):
            await view_where(store, owned_by((VIP1, "a")))
            answered = await submit(store, "move", target="b")
            result = answered.result
            assert result is not None and result.status == "done", result
            assert [(m.vip, m.source, m.target) for m in result.moves] == [(VIP1, "a", "b")]
            assert [vip for vip, _ in agents["a"].acks] == [VIP1]  # released before assigned
            assert result.gap_ms is not None and result.duration_ms is not None
            view = await store.read_view()
            assert owned_by((VIP1, "b"))(view)
            event = view.last_event(VIP1)
            assert event is not None and (event.cause, event.request) == ("manual", answered.id)
            print(f"planned move: gap {result.gap_ms} ms, total {result.duration_ms} ms")

    async def test_refusals_come_back_with_reasons(self, etcd: EtcdCluster) -> None:
        async with scene(
            etcd_config(etcd.endpoints), cluster_config("r2"), {"a": 200, "b": 100}
        ) as (store, agents, _):
            await view_where(store, owned_by((VIP1, "a")))
            await agents["b"].set_healthy(False)
            unknown = await submit(store, "move", target="nope")
            unhealthy = await submit(store, "move", target="b")
            assert unknown.result is not None and "unknown node nope" in unknown.result.message
            assert unhealthy.result is not None and "unhealthy" in unhealthy.result.message
            assert owned_by((VIP1, "a"))(await store.read_view())

    async def test_pause_stops_failover_until_resume(self, etcd: EtcdCluster) -> None:
        async with scene(
            etcd_config(etcd.endpoints), cluster_config("r3"), {"a": 200, "b": 100}, ttl=1
        ) as (store, agents, _):
            await view_where(store, owned_by((VIP1, "a")))
            paused = await submit(store, "pause")
            assert paused.result is not None and paused.result.status == "done"
            await agents["a"].crash()
            await view_where(store, lambda v: "a" not in v.nodes and VIP1 not in v.occupied)
            # Proving that nothing happens needs time to pass: five controller ticks.
            await asyncio.sleep(1.0)
            assert VIP1 not in (await store.read_view()).occupied
            await submit(store, "resume")
            await view_where(store, owned_by((VIP1, "b")))

    async def test_drain_and_undrain(self, etcd: EtcdCluster) -> None:
        async with scene(
            etcd_config(etcd.endpoints), cluster_config("r4"), {"a": 200, "b": 100}
        ) as (store, _agents, _):
            await view_where(store, owned_by((VIP1, "a")))
            drained = await submit(store, "drain", node="a")
            assert drained.result is not None and drained.result.status == "done", drained.result
            view = await store.read_view()
            assert owned_by((VIP1, "b"))(view)
            assert view.settings is not None and view.settings.drained == ("a",)
            undrained = await submit(store, "undrain", node="a")
            assert undrained.result is not None and undrained.result.status == "done"


class TestMoveSurvivesLeaderDeath:
    @pytest.mark.parametrize("hactl_times_out", [False, True])
    async def test_a_leader_dying_after_the_release_leaves_the_target_on_record(
        self, etcd: EtcdCluster, hactl_times_out: bool
    ) -> None:
        """The next leader finishes the move on the chosen node, not back on the old one,
        also when the operator's hactl gave up waiting meanwhile."""
        cfg = etcd_config(etcd.endpoints)
        cluster = cluster_config(f"m5{int(hactl_times_out)}")
        async with scene(cfg, cluster, {"a": 200, "b": 100}) as (store, _agents, ctls):
            await view_where(store, owned_by((VIP1, "a")))
            first = ctls[0].controller
            released = asyncio.Event()
            real_run = first.executor.run

            async def die_after_the_release(
                view: ClusterView, actions: Sequence[Action], unowned: dict[str, float]
            ) -> Outcome:
                cut = next((i for i, a in enumerate(actions) if isinstance(a, ReleaseVip)), None)
                if cut is None:
                    return await real_run(view, actions, unowned)
                outcome = await real_run(view, actions[: cut + 1], unowned)
                first.stop()  # nothing after the release is ever written by this leader
                released.set()
                return outcome

            first.executor.run = die_after_the_release
            request = Request(
                id=new_request_id(time.time()), kind="move", created=time.time()
            )  # no target: the controller picks b, the only other node
            if hactl_times_out:
                hactl = asyncio.create_task(submit_and_wait(store, request, wait=5.0))
            else:
                await requestflow.submit(store, request)
            await asyncio.wait_for(released.wait(), 20)
            await asyncio.wait_for(ctls[0].task, 20)
            # with no leader left, a acknowledges in its record and the key stays a's
            await view_where(store, lambda v: v.acknowledged(VIP1) and v.leader is None)
            if hactl_times_out:
                with pytest.raises(TimedOut, match="still running"):
                    await hactl  # ... and so the request is left for the next leader
            successor = Running(cfg, cluster, "ctl-next", 2)
            try:
                answered = await requestflow.wait_result(store, request.id, 20)
                assert answered.result is not None and answered.result.status == "done", (
                    answered.result
                )
                view = await view_where(store, owned_by((VIP1, "b")))
                assert [e.target for e in view.events] == ["a", "b"]
            finally:
                await successor.stop()


class TestLeadership:
    async def test_two_controllers_racing_elect_one_and_assign_once(
        self, etcd: EtcdCluster
    ) -> None:
        cluster = cluster_config("l1", VIP1, VIP2)
        async with scene(etcd_config(etcd.endpoints), cluster, {"a": 100}, controllers=2) as (
            store,
            _agents,
            ctls,
        ):
            view = await view_where(store, owned_by((VIP1, "a"), (VIP2, "a")))
            assert view.leader is not None and view.leader.id in ("ctl0", "ctl1")
            assert view.epoch == 2 and len(view.events) == 2
            assert sum(c.controller.leading for c in ctls) == 1

    async def test_standby_takes_over_when_the_leader_steps_down(self, etcd: EtcdCluster) -> None:
        async with scene(
            etcd_config(etcd.endpoints), cluster_config("l2"), {"a": 200, "b": 100}, controllers=2
        ) as (store, _agents, ctls):
            view = await view_where(store, lambda v: v.leader is not None)
            assert view.leader is not None
            leader = next(c for c in ctls if c.controller.identity == view.leader.id)
            other = next(c for c in ctls if c is not leader)
            await leader.stop()
            view = await view_where(
                store, lambda v: v.leader is not None and v.leader.id == other.controller.identity
            )
            answered = await submit(store, "move", target="b")
            assert answered.result is not None
            assert answered.result.controller == other.controller.identity


class TestEtcdFaults:
    async def test_one_of_three_members_lost_changes_nothing(
        self, etcd_cluster: EtcdCluster
    ) -> None:
        cfg = etcd_config(etcd_cluster.endpoints)
        async with scene(cfg, cluster_config("e1"), {"a": 200, "b": 100}) as (store, agents, _):
            before = await view_where(store, owned_by((VIP1, "a")))
            etcd_cluster.members[0].kill()
            # Outlast the 2 s lease twice over: the owner's lease must survive on the others.
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                await asyncio.sleep(0.25)
                assert not agents["a"].lease_lost.is_set()
            after = await eventually_async(lambda: _view_or_none(store))
            assert owned_by((VIP1, "a"))(after)
            assert after.epoch == before.epoch
            answered = await submit(store, "move", target="b")  # and the cluster still works
            assert answered.result is not None and answered.result.status == "done"

    async def test_etcd_restart_keeps_the_vip_and_the_controller_recovers(
        self, etcd: EtcdCluster
    ) -> None:
        cfg = etcd_config(etcd.endpoints)
        async with scene(cfg, cluster_config("e2"), {"a": 200, "b": 100}) as (store, _agents, _):
            before = await view_where(store, owned_by((VIP1, "a")))
            etcd.members[0].restart()
            after = await eventually_async(lambda: _view_or_none(store))
            assert owned_by((VIP1, "a"))(after) and after.epoch == before.epoch
            answered = await submit(store, "move", target="b")
            assert answered.result is not None and answered.result.status == "done"


async def _view_or_none(store: Store) -> ClusterView | None:
    try:
        return await store.read_view()
    except StoreUnavailable:
        return None


class TestFailbackAndHistory:
    async def test_failback_returns_the_vip_after_the_hold_through_a_release(
        self, etcd: EtcdCluster
    ) -> None:
        cluster = cluster_config("f1", failback=True, hold=0.5)
        cfg = etcd_config(etcd.endpoints)
        async with scene(cfg, cluster, {"a": 200, "b": 100}, ttl=1) as (store, agents, _):
            await view_where(store, owned_by((VIP1, "a")))
            await agents["a"].crash()
            await view_where(store, owned_by((VIP1, "b")))
            returning = await StandInAgent(cfg, "f1", "a", 200, ttl=1).start()
            try:
                view = await view_where(store, owned_by((VIP1, "a")))
                event = view.last_event(VIP1)
                assert event is not None and (event.source, event.cause) == ("b", "failback")
                assert [vip for vip, _ in agents["b"].acks] == [VIP1]  # b let go first
            finally:
                await returning.close()

    async def test_event_history_is_bounded(self, etcd: EtcdCluster) -> None:
        cfg = etcd_config(etcd.endpoints)
        async with scene(cfg, cluster_config("f2"), {"a": 200, "b": 100}) as (store, _a, ctls):
            history = ctls[0].controller.config.event_history
            await view_where(store, owned_by((VIP1, "a")))
            target = "b"
            for _ in range(history + 2):
                answered = await submit(store, "move", target=target)
                assert answered.result is not None and answered.result.status == "done"
                target = "a" if target == "b" else "b"
            view = await store.read_view()
            assert view.epoch == history + 3
            assert [e.seq for e in view.events] == list(range(4, history + 4))

    async def test_answered_requests_are_pruned_to_the_request_history(
        self, etcd: EtcdCluster
    ) -> None:
        """Answered requests, refused ones too, beyond `request_history` are deleted, oldest
        first; `events/` has the same bound (above)."""
        cfg = etcd_config(etcd.endpoints)
        async with scene(cfg, cluster_config("f3"), {"a": 200}) as (store, _a, ctls):
            history = ctls[0].controller.config.request_history
            await view_where(store, owned_by((VIP1, "a")))
            ids = []
            for i in range(history + 10):
                if i % 5 == 4:  # a refused request counts as answered
                    answered = await submit(store, "move", target="nobody")
                    assert answered.result is not None and answered.result.status == "refused"
                else:
                    answered = await submit(store, "pause" if i % 2 else "resume")
                    assert answered.result is not None and answered.result.final
                ids.append(answered.id)
            view = await view_where(store, lambda v: len(v.requests) <= history)
            assert sorted(r.id for r in view.requests) == sorted(ids[-history:])


class TestFencing:
    async def test_a_deposed_leaders_writes_fail(self, etcd: EtcdCluster) -> None:
        """Leadership is checked by etcd on every write, not by the controller's own belief."""
        cfg = etcd_config(etcd.endpoints)
        async with Store(cfg, "x1") as old_store, Store(cfg, "x1") as new_store:
            old = Election(old_store, "old", ttl=30, keepalive_interval=1)
            assert await old.campaign()
            await old_store.delete(old_store.schema.leader)  # as if its lease had run out
            new = Election(new_store, "new", ttl=30, keepalive_interval=1)
            assert await new.campaign()
            agent = await StandInAgent(cfg, "x1", "a").start()
            try:
                view = await new_store.read_view()
                stale = Executor(old_store, old.fence, event_history=10)
                outcome = await stale.run(view, [AssignVip(VIP1, "a", agent.lease, "initial")], {})
                assert outcome.applied == 0 and outcome.conflict
                assert VIP1 not in (await new_store.read_view()).occupied
                fresh = Executor(new_store, new.fence, event_history=10)
                outcome = await fresh.run(view, [AssignVip(VIP1, "a", agent.lease, "initial")], {})
                assert outcome.applied == 1
            finally:
                await agent.close()
                await old.resign()
                await new.resign()
