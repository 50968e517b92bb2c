"""The controller loop, election and executor on the in-memory store: no etcd, no sleeping.

Two controllers share one `MemoryStore`; nodes are a few lines that keep a
lease and list the VIPs they hold, as agents do. Time is a `ManualClock`
shared by the store's leases and the controllers' clocks, and `Scene.run`
advances it in steps of `STEP`, running both controllers' cycles concurrently
at each step, so they race on every write.

The same scenarios against a real etcd, in real time, are in
`tests/integration/cluster/test_controller.py`; the store contract both
stores keep is `tests/integration/cluster/test_store_contract.py`.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field, replace

from controller.actions import AssignVip
from controller.execute import Executor
from controller.loop import Controller
from haproxy_py.cluster.config import ClusterConfig, ControllerConfig
from haproxy_py.cluster.memstore import MemoryData, MemoryStore
from haproxy_py.cluster.records import ClusterView, NodeRecord, VipAssignment
from tests.support.clock import ManualClock
from tests.support.wait import eventually_async

VIP1, VIP2 = "198.18.200.1", "198.18.200.2"
STEP = 0.25  # seconds of the manual clock per round
TTL = 2


def cluster_config(*vips: str) -> ClusterConfig:
    return ClusterConfig("c", "active-standby", vips or (VIP1,), failback=False, failback_hold=30.0)


def config(ident: str, tick: float = STEP) -> ControllerConfig:
    return ControllerConfig(
        id=ident,
        lease_ttl=TTL,
        keepalive_interval=TTL / 4,
        tick=tick,
        release_timeout=3.0,
        event_history=50,
        request_history=20,
        metrics=None,
    )


@dataclass
class Node:
    """An agent reduced to the protocol: a lease, a record listing what it holds, acks."""

    store: MemoryStore
    name: str
    priority: int
    clock: ManualClock
    lease: int = 0
    alive: bool = True

    async def register(self) -> None:
        self.lease = (await self.store.grant_lease(TTL)).id
        await self.publish(())

    async def publish(self, held: tuple[str, ...]) -> None:
        since = self.clock() - 60
        record = NodeRecord(self.name, priority=self.priority, healthy=True, healthy_since=since)
        record = replace(record, vips=held)
        await self.store.put(self.store.schema.node(self.name), record.to_json(), self.lease)

    async def step(self) -> None:
        if not self.alive:
            return
        await self.store.keepalive(self.lease)
        view = await self.store.read_view()
        mine = {v: a for v, a in view.vips.items() if a.node == self.name}
        for vip, a in mine.items():
            if a.state == "releasing":
                await self.store.delete_if(self.store.schema.vip(vip), a.mod_revision)
        held = tuple(sorted(v for v, a in mine.items() if a.state == "assigned"))
        node = view.nodes.get(self.name)
        if node is None or node.vips != held:
            await self.publish(held)


@dataclass
class Scene:
    clock: ManualClock = field(default_factory=lambda: ManualClock(time.time()))
    data: MemoryData = field(init=False)
    controllers: list[Controller] = field(default_factory=list)
    nodes: dict[str, Node] = field(default_factory=dict)
    stopped: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.data = MemoryData(self.clock)

    def store(self) -> MemoryStore:
        return MemoryStore("c", data=self.data)

    def controller(self, ident: str, *vips: str) -> Controller:
        cluster = cluster_config(*vips)
        ctl = Controller(
            self.store(), cluster, config(ident), ident, clock=self.clock, monotonic=self.clock
        )
        self.controllers.append(ctl)
        return ctl

    async def node(self, name: str, priority: int = 100) -> Node:
        node = Node(self.store(), name, priority, self.clock)
        await node.register()
        self.nodes[name] = node
        return node

    async def run(self, seconds: float) -> ClusterView:
        """`seconds` of manual time: each step keeps the live leases and races the cycles."""
        for _ in range(round(seconds / STEP)):
            self.clock.advance(STEP)
            live = [c for c in self.controllers if c.identity not in self.stopped]
            for ctl in live:
                await ctl.election.refresh()
            for node in self.nodes.values():
                await node.step()
            await asyncio.gather(*(c.cycle() for c in live))
        return await self.store().read_view()

    def leaders(self) -> list[str]:
        return [c.identity for c in self.controllers if c.election.revision is not None]


async def test_two_controllers_racing_elect_one_and_assign_once() -> None:
    scene = Scene()
    scene.controller("ctl0", VIP1, VIP2)
    scene.controller("ctl1", VIP1, VIP2)
    await scene.node("a")
    view = await scene.run(2)
    assert len(scene.leaders()) == 1 and view.leader is not None
    assert view.leader.id == scene.leaders()[0]
    assert {v: a.node for v, a in view.vips.items()} == {VIP1: "a", VIP2: "a"}
    assert view.epoch == 2 and [(e.vip, e.cause) for e in view.events] == [
        (VIP1, "initial"),
        (VIP2, "initial"),
    ]
    settled = view.revision
    view = await scene.run(10)
    assert view.revision == settled, "a settled cluster is written to again"


async def test_a_frozen_leader_is_replaced_within_its_lease_and_comes_back_as_standby() -> None:
    """The leader stops (no keepalive, no cycle): the standby leads once the lease is gone;
    the old leader, resumed, sees it lost and does not write."""
    scene = Scene()
    scene.controller("ctl0")
    scene.controller("ctl1")
    await scene.node("a")
    await scene.run(1)
    (leader,) = scene.leaders()
    scene.stopped.add(leader)
    view = await scene.run(TTL - STEP)
    assert view.leader is not None and view.leader.id == leader, "replaced before its TTL"
    view = await scene.run(1)
    assert view.leader is not None and view.leader.id != leader
    scene.stopped.clear()
    settled = (await scene.run(STEP)).revision
    assert scene.leaders() == [view.leader.id]
    view = await scene.run(2)
    assert view.revision == settled and view.owner(VIP1) == "a"


async def test_a_resigning_leader_hands_over_at_once() -> None:
    scene = Scene()
    scene.controller("ctl0")
    scene.controller("ctl1")
    await scene.node("a")
    await scene.run(1)
    (leader,) = scene.leaders()
    await next(c for c in scene.controllers if c.identity == leader).election.resign()
    scene.stopped.add(leader)
    view = await scene.run(STEP)
    assert view.leader is not None and view.leader.id != leader


async def test_a_lost_nodes_vip_moves_once_its_lease_runs_out() -> None:
    scene = Scene()
    scene.controller("ctl0")
    scene.controller("ctl1")
    await scene.node("a", priority=200)
    await scene.node("b", priority=100)
    view = await scene.run(1)
    assert view.owner(VIP1) == "a"
    scene.nodes["a"].alive = False
    view = await scene.run(TTL - 2 * STEP)
    assert view.owner(VIP1) == "a", "moved before the owner's lease ran out"
    view = await scene.run(1)
    assert view.owner(VIP1) == "b"
    event = view.last_event(VIP1)
    assert event is not None and (event.source, event.cause) == ("a", "node lost")


async def test_a_deposed_leaders_writes_fail() -> None:
    """Leadership is checked by the store on every write, not by the controller's belief."""
    scene = Scene()
    old, new = scene.controller("old"), scene.controller("new")
    node = await scene.node("a")
    assert await old.election.campaign()
    await old.store.delete(old.store.schema.leader)  # as if its lease had run out
    assert await new.election.campaign()
    view = await new.store.read_view()
    action = AssignVip(VIP1, "a", node.lease, "initial")
    stale = Executor(old.store, old.election.fence, event_history=10)
    outcome = await stale.run(view, [action], {})
    assert outcome.applied == 0 and outcome.conflict
    assert VIP1 not in (await new.store.read_view()).occupied
    fresh = Executor(new.store, new.election.fence, event_history=10)
    assert (await fresh.run(view, [action], {})).applied == 1


async def test_etcd_unreachable_leaves_the_placement_and_the_leader_recovers() -> None:
    scene = Scene()
    scene.controller("ctl0")
    await scene.node("a")
    view = await scene.run(1)
    placed = view.vips[VIP1]
    scene.data.down = True
    scene.clock.advance(STEP)
    for ctl in scene.controllers:
        await ctl.cycle()
        assert list(ctl.metrics.etcd_reachable.samples()) == [((), 0.0)]
    scene.data.down = False
    view = await scene.run(1)
    assert view.vips[VIP1].mod_revision == placed.mod_revision
    assert scene.leaders() == ["ctl0"]


async def test_run_on_one_store_follows_the_watch_and_stops_cleanly() -> None:
    """The whole loop (`run`: keepalive, watch, cycles) on real time, against one store."""
    data = MemoryData()
    store = MemoryStore("c", data=data)
    cluster = cluster_config()
    ctls = [Controller(MemoryStore("c", data=data), cluster, config(i, 30), i) for i in "xy"]
    tasks = [asyncio.create_task(c.run()) for c in ctls]
    try:
        lease = (await store.grant_lease(30)).id
        record = NodeRecord("a", healthy=True, healthy_since=time.time() - 60)
        await store.put(store.schema.node("a"), record.to_json(), lease)

        async def placed() -> VipAssignment | None:
            return (await store.read_view()).vips.get(VIP1)

        # the tick is 30 s: only the watch can wake the leader this fast
        assignment = await eventually_async(placed, within=10, what="VIP1 assigned")
        assert assignment.node == "a"
        assert sum(c.leading for c in ctls) == 1
    finally:
        for ctl in ctls:
            ctl.stop()
        await asyncio.wait_for(asyncio.gather(*tasks), 10)
    assert (await store.read_view()).leader is None, "stopping leaves no leader key"
