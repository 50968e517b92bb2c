"""State no controller wrote, repaired by the controllers themselves (review M1), against a
real etcd: a VIP key whose owner is not registered or that has no lease, and a leader key
without a lease. Each used to wedge failover until someone deleted the key by hand; now
the controllers repair it within a few seconds and `hactl failover` works meanwhile."""

from __future__ import annotations

import asyncio
import time

from haproxy_py.cluster.records import ControllerLeader, VipAssignment
from tests.integration.cluster.helpers import (
    VIP1,
    cluster_config,
    etcd_config,
    owned_by,
    scene,
    submit,
    view_where,
)
from tests.support.etcd import EtcdCluster

REPAIRED_WITHIN = 5.0


def ghost(lease: int = 0) -> bytes:
    return VipAssignment(VIP1, "ghost", epoch=99, since=0.0, lease=lease).to_json()


async def test_a_vip_key_naming_an_unregistered_owner_without_lease_is_reassigned(
    etcd: EtcdCluster,
) -> None:
    cluster = cluster_config("h1")
    async with scene(etcd_config(etcd.endpoints), cluster, {"a": 200, "b": 100}) as (store, *_):
        await view_where(store, owned_by((VIP1, "a")))
        await store.put(store.schema.vip(VIP1), ghost())
        started = time.monotonic()
        view = await view_where(store, owned_by((VIP1, "a")), within=REPAIRED_WITHIN)
        assert view.vips[VIP1].lease == view.nodes["a"].lease
        assert view.events[-1].source == "ghost" and view.events[-1].cause == "node lost"
        assert time.monotonic() - started < REPAIRED_WITHIN
        # ... and a planned failover works in that state too
        await store.put(store.schema.vip(VIP1), ghost())
        answered = await submit(store, "move", target="b")
        assert answered.result is not None and answered.result.status == "done", answered.result
        await view_where(store, owned_by((VIP1, "b")))


async def test_a_ghost_owner_whose_lease_lives_keeps_the_vip_until_the_lease_ends(
    etcd: EtcdCluster,
) -> None:
    """A live lease may still be fencing a node that has not dropped the address yet."""
    cluster = cluster_config("h2")
    async with scene(etcd_config(etcd.endpoints), cluster, {"a": 200}) as (store, *_):
        await view_where(store, owned_by((VIP1, "a")))
        lease = await store.grant_lease(30)
        await store.put(store.schema.vip(VIP1), ghost(lease.id))
        await view_where(store, lambda v: v.stale(VIP1))
        await asyncio.sleep(1.0)  # several controller cycles (tick 0.2 s)
        held = await store.read_view()
        assert held.owner(VIP1) == "ghost", "given on while the owner's lease was alive"
        await store.revoke(lease.id)
        await view_where(store, owned_by((VIP1, "a")), within=REPAIRED_WITHIN)


async def test_a_leader_key_without_lease_is_replaced_and_failover_works(
    etcd: EtcdCluster,
) -> None:
    cluster = cluster_config("h3")
    async with scene(etcd_config(etcd.endpoints), cluster, {"a": 200, "b": 100}, controllers=2) as (
        store,
        *_,
    ):
        await view_where(store, lambda v: v.leader is not None and owned_by((VIP1, "a"))(v))
        # a put over the leader key keeps its create revision and drops its lease
        stale = ControllerLeader("ghost-controller", since=time.time())
        await store.put(store.schema.leader, stale.to_json())
        started = time.monotonic()
        answered = await submit(store, "move", target="b")
        assert answered.result is not None and answered.result.status == "done", answered.result
        view = await view_where(
            store, lambda v: v.leader is not None and v.leader.lease != 0, within=REPAIRED_WITHIN
        )
        assert view.leader is not None and view.leader.id != "ghost-controller"
        assert time.monotonic() - started < REPAIRED_WITHIN + 1
        await view_where(store, owned_by((VIP1, "b")))
