"""BGP mode on a real etcd: the controller writes `announce/<node>/vips`; the agent reads it."""

from __future__ import annotations

import asyncio
import dataclasses
import time
import types
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from agent.bgpside import BgpSide
from haproxy_py.cluster.announcement import Announce
from haproxy_py.cluster.config import ClusterConfig
from haproxy_py.cluster.records import NodeRecord
from haproxy_py.cluster.store import Store
from tests.integration.cluster.helpers import (
    VIP1,
    VIP2,
    Running,
    cluster_config,
    etcd_config,
    submit,
)
from tests.support.etcd import EtcdCluster
from tests.support.wait import eventually_async


class Node:
    """A registered node whose record says what the test wants (liveness, readiness)."""

    def __init__(self, store: Store, name: str, ttl: int = 1) -> None:
        self.store, self.name, self.ttl = store, name, ttl
        self.lease = 0
        self.record = NodeRecord(name=name, healthy=True, ready=2, pools=2, priority=100)
        self.alive: asyncio.Task[None] | None = None

    async def start(self) -> Node:
        self.lease = (await self.store.grant_lease(self.ttl)).id
        await self.publish()
        self.alive = asyncio.create_task(self._keepalive())
        return self

    async def publish(self, **changes: object) -> None:
        self.record = dataclasses.replace(self.record, **changes)
        await self.store.put(self.store.schema.node(self.name), self.record.to_json(), self.lease)

    async def _keepalive(self) -> None:
        while True:
            await self.store.keepalive(self.lease)
            await asyncio.sleep(self.ttl / 4)

    def crash(self) -> None:
        if self.alive is not None:
            self.alive.cancel()


@asynccontextmanager
async def bgp_cluster(
    etcd: EtcdCluster, cluster: ClusterConfig, names: tuple[str, ...]
) -> AsyncIterator[tuple[Store, dict[str, Node]]]:
    config = etcd_config(etcd.endpoints)
    store = Store(config, cluster.name)
    nodes = {n: await Node(store, n).start() for n in names}
    ctl = Running(config, cluster, "ctl0", 2)
    try:
        yield store, nodes
    finally:
        await ctl.stop()
        for node in nodes.values():
            node.crash()
        await store.close()


async def announced(store: Store) -> dict[str, tuple[str, ...]]:
    kvs, _ = await store.get_prefix(store.schema.announce_prefix)
    out = {}
    for kv in kvs:
        record, node = Announce.parse(kv.value), store.schema.announce_node(kv.key)
        assert record is not None and node is not None
        out[node] = record.vips
    return out


async def until_announced(store: Store, want: dict[str, tuple[str, ...]]) -> None:
    async def check() -> bool:
        return await announced(store) == want

    await eventually_async(check, 20, f"announce/ to become {want}")


BOTH = (VIP1, VIP2)


class TestController:
    async def test_ready_nodes_announce_and_a_pool_down_withdraws_only_that_node(
        self, etcd: EtcdCluster
    ) -> None:
        cluster = cluster_config("bgp1", VIP1, VIP2, mode="bgp")
        async with bgp_cluster(etcd, cluster, ("a", "b", "c")) as (store, nodes):
            await until_announced(store, {"a": BOTH, "b": BOTH, "c": BOTH})
            await nodes["c"].publish(ready=1)
            await until_announced(store, {"a": BOTH, "b": BOTH, "c": ()})
            view = await store.read_view()
            assert view.vips == {}  # no floating assignment in BGP mode

    async def test_a_backend_outage_shared_by_every_node_withdraws_nobody(
        self, etcd: EtcdCluster
    ) -> None:
        cluster = cluster_config("bgp2", VIP1, VIP2, mode="bgp")
        async with bgp_cluster(etcd, cluster, ("a", "b")) as (store, nodes):
            await until_announced(store, {"a": BOTH, "b": BOTH})
            await nodes["a"].publish(ready=0)
            await until_announced(store, {"a": (), "b": BOTH})
            await nodes["b"].publish(ready=0)  # the last announcer keeps announcing: 503s
            await until_announced(store, {"a": BOTH, "b": BOTH})
            await nodes["b"].publish(healthy=False)  # not live: it cannot serve at all
            await until_announced(store, {"a": BOTH, "b": ()})

    async def test_drain_and_maintenance_and_the_minimum(self, etcd: EtcdCluster) -> None:
        cluster = dataclasses.replace(
            cluster_config("bgp3", VIP1, VIP2, mode="bgp"), min_announcers=2
        )
        async with bgp_cluster(etcd, cluster, ("a", "b", "c")) as (store, nodes):
            await until_announced(store, {"a": BOTH, "b": BOTH, "c": BOTH})
            assert (await submit(store, "drain", node="c")).result.status == "done"
            await until_announced(store, {"a": BOTH, "b": BOTH, "c": ()})
            await nodes["b"].publish(ready=1)  # below the minimum of 2: b stays, less ready
            await asyncio.sleep(0.5)
            assert await announced(store) == {"a": BOTH, "b": BOTH, "c": ()}
            assert (await submit(store, "pause")).result.status == "done"
            await nodes["a"].publish(healthy=False)
            await asyncio.sleep(1.0)  # paused: the previous answer stands
            assert await announced(store) == {"a": BOTH, "b": BOTH, "c": ()}
            assert (await submit(store, "resume")).result.status == "done"
            assert (await submit(store, "undrain", node="c")).result.status == "done"
            await until_announced(store, {"a": (), "b": BOTH, "c": BOTH})

    async def test_a_death_and_a_return_cost_the_records_two_revisions_and_no_write(
        self, etcd: EtcdCluster
    ) -> None:
        vips = tuple(sorted(f"198.18.201.{i}" for i in range(1, 41)))
        cluster = cluster_config("bgp4", *vips, mode="bgp")
        async with bgp_cluster(etcd, cluster, ("a", "b")) as (store, nodes):
            await until_announced(store, {"a": vips, "b": vips})
            _, before = await store.get_prefix(store.schema.announce_prefix)
            nodes["b"].crash()

            async def gone() -> bool:
                return await store.get(store.schema.node("b")) is None

            await eventually_async(gone, 20, "b's lease to end")
            await asyncio.sleep(0.5)  # the controller's cycles for it
            _, after = await store.get_prefix(store.schema.announce_prefix)
            # the lease's end deletes nodes/b; announce/b stays for b's return (rule 6)
            assert after - before == 1
            assert await announced(store) == {"a": vips, "b": vips}
            nodes["b"] = await Node(store, "b").start()  # back, under a new lease
            await asyncio.sleep(0.5)
            _, back = await store.get_prefix(store.schema.announce_prefix)
            assert back - after == 1  # its record; the same answer is not written again
            await nodes["b"].publish(ready=1)  # a pool down: the controller does write
            await until_announced(store, {"a": vips, "b": ()})

    async def test_many_nodes_lost_at_once_leave_only_the_survivors(
        self, etcd: EtcdCluster
    ) -> None:
        cluster = cluster_config("bgp6", VIP1, VIP2, mode="bgp")
        names = tuple(f"n{i}" for i in range(8))
        async with bgp_cluster(etcd, cluster, names) as (store, nodes):
            await until_announced(store, {n: BOTH for n in names})
            _, before = await store.get_prefix(store.schema.announce_prefix)
            for name in names[2:]:
                nodes[name].crash()

            async def survivors() -> bool:
                return set((await store.read_view()).nodes) == {"n0", "n1"}

            await eventually_async(survivors, 20, "6 leases to end")
            await asyncio.sleep(0.5)  # the controller's cycles for them
            _, after = await store.get_prefix(store.schema.announce_prefix)
            # 6 records expire (one revision each at most); their keys stay for their return
            assert after - before <= 6
            assert await announced(store) == {n: BOTH for n in names}


class FakeAnnouncer:
    """The seams `BgpSide` sets; the real one needs BIRD (tests/lab/bgp)."""

    permitted: frozenset[str] | None = frozenset({"x"})
    keep_until = 0.0

    def fenced(self) -> bool | None:
        return False

    async def run(self) -> None:
        await asyncio.Event().wait()


class FakeCore:
    def __init__(self, name: str) -> None:
        self.name = name
        self.timing = types.SimpleNamespace(lease_ttl=2, fence_margin=0.2)
        self.clock = types.SimpleNamespace(deadline=-float("inf"))
        self.failsafe_until = -float("inf")


class TestAgentSide:
    async def test_the_agent_follows_its_key_and_keeps_the_last_one_without_etcd(
        self, etcd: EtcdCluster
    ) -> None:
        store = Store(etcd_config(etcd.endpoints), "bgp5")
        announcer = FakeAnnouncer()
        side = BgpSide(announcer, FakeCore("a"), store, 0.2, 5.0)
        assert announcer.permitted is None  # nothing touched before the key was read
        assert side.fence() is None  # restarted: the previous agent's lease may still run
        task = asyncio.create_task(side.run())
        try:
            await eventually_async(lambda: announcer.permitted == frozenset(), 10, "read")
            key = store.schema.announce("a")
            await store.put(key, Announce((VIP1, VIP2)).to_json())
            await eventually_async(lambda: announcer.permitted == {VIP1, VIP2}, 10, "watched")
            await store.put(store.schema.announce("a2"), Announce((VIP1,)).to_json())
            await store.put(key, b"not json")
            await asyncio.sleep(0.5)
            assert announcer.permitted == {VIP1, VIP2}  # another node's key, unreadable: kept
            started = time.monotonic()
            await store.put(key, Announce((VIP2,)).to_json())
            await eventually_async(lambda: announcer.permitted == {VIP2}, 10, "watched")
            assert time.monotonic() - started < 5
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await store.close()
