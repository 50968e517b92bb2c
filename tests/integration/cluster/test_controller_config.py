"""An unreadable `config` key never stops the leading controller from deciding (real etcd)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from controller.loop import Controller
from haproxy_py.cluster.records import ClusterView
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

UNREADABLE = json.dumps({"mode": "active-active-v2", "vips": [VIP1]}).encode()


@asynccontextmanager
async def scene(etcd: EtcdCluster, name: str) -> AsyncIterator[tuple[Store, Store, Controller]]:
    """An unreadable `config`, one stand-in agent and a controller that starts leading;
    yields (observer store, the controller's store, the controller)."""
    endpoints = etcd_config(etcd.endpoints)
    cluster = cluster_config(name, VIP1)
    observer = Store(endpoints, cluster.name)
    agent = StandInAgent(endpoints, cluster.name, "a", 100, 2)
    store = Store(endpoints, cluster.name)
    controller = Controller(store, cluster, controller_config("ctl", 2), "ctl")
    try:
        await observer.put(observer.schema.config, UNREADABLE)
        await agent.start()
        task = asyncio.create_task(controller.run())
        yield observer, store, controller
        controller.stop()
        await asyncio.wait_for(task, 20)
    finally:
        await agent.close()
        await store.close()
        await observer.close()


def assigned(view: ClusterView) -> bool:
    a = view.vips.get(VIP1)
    return a is not None and a.node == "a" and a.state == "assigned"


async def test_an_unreadable_config_is_replaced_once_and_the_vip_still_gets_assigned(
    etcd: EtcdCluster,
) -> None:
    async with scene(etcd, "c7") as (observer, store, _):
        reads = 0
        read_view = store.read_view

        async def counted() -> ClusterView:
            nonlocal reads
            reads += 1
            return await read_view()

        store.read_view = counted
        view = await view_where(observer, lambda v: assigned(v) and v.settings is not None, 15)
        assert view.settings is not None and view.settings.mode == "active-standby"
        reads_then = reads
        await asyncio.sleep(2.0)
        # settled: the tick (0.2 s) and a few watch wakes, not a read per etcd round trip
        assert reads - reads_then < 40, f"{reads - reads_then} reads in 2 s"


async def test_a_config_that_cannot_be_replaced_still_leaves_the_controller_deciding(
    etcd: EtcdCluster,
) -> None:
    """Someone rewrites the key unreadable after every write: decisions go on with the
    file's policy meanwhile."""
    async with scene(etcd, "c7b") as (observer, _, _):
        stop = asyncio.Event()

        async def vandal() -> None:
            while not stop.is_set():
                if (await observer.read_view()).settings is not None:
                    await observer.put(observer.schema.config, UNREADABLE)
                await asyncio.sleep(0.005)

        vandalism = asyncio.create_task(vandal())
        try:
            await view_where(observer, assigned, within=15)
        finally:
            stop.set()
            await vandalism
