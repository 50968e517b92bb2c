"""The controller's early revoke of a lease that has provably run out, against real etcd."""

from __future__ import annotations

import asyncio
import time
from contextlib import AsyncExitStack

import structlog

from controller.expiry import revoke_when_expired
from controller.loop import Controller
from haproxy_py.cluster.config import EtcdConfig
from haproxy_py.cluster.store import Store
from tests.integration.cluster.helpers import (
    VIP1,
    cluster_config,
    controller_config,
    etcd_config,
    view_where,
)
from tests.support.etcd import EtcdCluster
from tests.support.stand_in import StandInAgent
from tests.support.wait import eventually_async


async def refresh(store: Store, lease: int) -> tuple[float, float]:
    sent = time.monotonic()
    await store.keepalive(lease)
    return sent, time.monotonic()


async def test_a_dead_lease_is_revoked_after_its_end_never_before(etcd: EtcdCluster) -> None:
    """Each early revoke comes after the lease's end. Readings that a loaded machine delays past
    `COVER` prove nothing, and etcd's sweep may come first: that happens, but not every time."""
    async with Store(etcd_config(etcd.endpoints), "x") as store:
        lateness = []
        for _ in range(10):
            lease = (await store.grant_lease(2)).id
            sent, received = await refresh(store, lease)
            revoked = await revoke_when_expired(store, lease)
            assert time.monotonic() >= sent + 2.0, "gone before the lease could have run out"
            assert (await store.lease_time_to_live(lease))[0] == -1
            if revoked:
                lateness.append(time.monotonic() - received - 2.0)
            if len(lateness) == 3:
                break
        assert lateness, "etcd's sweep came first in 10 of 10: the early revoke never worked"
        print(f"EXPIRY revoked {[round(x * 1000) for x in lateness]} ms after the lease's end")


async def test_a_lapsing_owners_lease_is_revoked_at_its_first_zero_reading(
    etcd: EtcdCluster,
) -> None:
    """An owner that gives its 2 s lease up 1 s after its last keepalive (`Timing.lapse`):
    revoked from 1 s after that keepalive, not after the lease's own end."""
    async with Store(etcd_config(etcd.endpoints), "x") as store:
        for _ in range(3):
            lease = (await store.grant_lease(2)).id
            sent, _ = await refresh(store, lease)
            assert await revoke_when_expired(store, lease, lapse=1)
            done = time.monotonic()
            assert done >= sent + 1.0, "revoked before the owner lapsed"
            assert done < sent + 2.0, "no sooner than the lease's own end"
            assert (await store.lease_time_to_live(lease))[0] == -1


async def test_a_lease_refreshed_in_its_last_second_is_left_alone(etcd: EtcdCluster) -> None:
    async with Store(etcd_config(etcd.endpoints), "x") as store:
        lease = (await store.grant_lease(2)).id
        watcher = asyncio.create_task(revoke_when_expired(store, lease))
        for _ in range(3):  # refreshed 1.6 s apart: it reads 0 for 0.6 s before each refresh
            await asyncio.sleep(1.6)
            sent, _ = await refresh(store, lease)
            assert not watcher.done(), "revoked a lease that was still alive"
        assert await asyncio.wait_for(watcher, 5)
        assert time.monotonic() >= sent + 2.0


async def test_a_one_second_lease_is_left_to_etcd(etcd: EtcdCluster) -> None:
    """TTL 1 reads 0 from the start: nothing to prove; etcd's sweep removes it."""
    async with Store(etcd_config(etcd.endpoints), "x") as store:
        lease = (await store.grant_lease(1)).id
        assert not await asyncio.wait_for(revoke_when_expired(store, lease), 5)


async def two_agents(
    stack: AsyncExitStack, endpoints: EtcdConfig, cluster: str
) -> dict[str, StandInAgent]:
    """Agents a (preferred) and b under 2 s leases, closed with `stack`."""
    agents = {}
    for name, priority in (("a", 200), ("b", 100)):
        agents[name] = await StandInAgent(endpoints, cluster, name, priority, 2).start()
        stack.push_async_callback(agents[name].close)
    return agents


async def test_the_leader_revokes_a_dead_owners_lease_and_moves_its_vip(
    etcd: EtcdCluster,
) -> None:
    endpoints = etcd_config(etcd.endpoints)
    cluster = cluster_config("exp", VIP1)
    async with Store(endpoints, cluster.name) as observer, AsyncExitStack() as stack:
        agents = await two_agents(stack, endpoints, cluster.name)
        store = Store(endpoints, cluster.name)
        stack.push_async_callback(store.close)
        controller = Controller(store, cluster, controller_config("ctl", 2), "ctl")
        with structlog.testing.capture_logs() as logs:
            task = asyncio.create_task(controller.run())
            await view_where(observer, lambda v: v.owner(VIP1) == "a")
            crashed = time.monotonic()
            await agents["a"].crash()
            await view_where(observer, lambda v: v.owner(VIP1) == "b", within=10)
            print(f"EXPIRY VIP on b {(time.monotonic() - crashed) * 1000:.0f} ms after a's crash")
            controller.stop()
            await asyncio.wait_for(task, 20)
        revoked = [e for e in logs if e["event"] == "lease revoked: it had run out"]
        assert [e["lease"] for e in revoked] == [f"{agents['a'].lease:x}"]


async def test_a_standby_revokes_a_dead_leaders_and_its_nodes_leases(etcd: EtcdCluster) -> None:
    """The leading controller dies with its node's agent (a SIGKILLed node): the standby has
    watched both leases all along, revokes them right after their end, leads, moves the VIP."""
    endpoints = etcd_config(etcd.endpoints)
    cluster = cluster_config("exp2", VIP1)
    async with Store(endpoints, cluster.name) as observer, AsyncExitStack() as stack:
        agents = await two_agents(stack, endpoints, cluster.name)
        controllers, tasks = [], []
        with structlog.testing.capture_logs() as logs:
            for ident in ("ctl-a", "ctl-b"):  # ctl-a first, so it leads
                store = Store(endpoints, cluster.name)
                stack.push_async_callback(store.close)
                controllers.append(Controller(store, cluster, controller_config(ident, 2), ident))
                tasks.append(asyncio.create_task(controllers[-1].run()))
                await view_where(observer, lambda v: v.leader is not None)
            leader, standby = controllers
            view = await view_where(observer, lambda v: v.owner(VIP1) == "a")
            assert view.leader is not None and view.leader.id == "ctl-a"
            dead = view.leader.lease

            async def no_goodbye() -> None:
                pass

            leader.election.resign = no_goodbye
            # the standby proves both leases' end from its own readings, started long before

            async def watching() -> set[int] | None:
                return set(standby._expiries) if standby._expiries else None

            assert await eventually_async(watching, 5) == {dead, agents["a"].lease}
            crashed = time.monotonic()
            tasks[0].cancel()  # its keepalive stops with it: a SIGKILL as etcd sees it
            await agents["a"].crash()
            view = await view_where(observer, lambda v: v.owner(VIP1) == "b", within=10)
            took = time.monotonic() - crashed
            assert view.leader is not None and view.leader.id == "ctl-b"
            print(f"EXPIRY VIP on b {took * 1000:.0f} ms after node a's crash")
            standby.stop()
            await asyncio.wait_for(tasks[1], 20)
        revoked = {e["lease"] for e in logs if e["event"] == "lease revoked: it had run out"}
        # Each right after its end, unless etcd's sweep came first (in about 1 trial in 10).
        assert revoked <= {f"{dead:x}", f"{agents['a'].lease:x}"}, "a live lease was revoked"
        print(f"EXPIRY revoked by the standby: {len(revoked)} of 2")
