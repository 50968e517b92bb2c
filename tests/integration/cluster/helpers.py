"""Shared bits for the cluster integration tests: waiting for a view, config builders, a
scene of stand-in agents and running controllers."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from typing import TypeVar

from controller.loop import Controller
from haproxy_py.cluster import requestflow
from haproxy_py.cluster.config import ClusterConfig, ControllerConfig, EtcdConfig
from haproxy_py.cluster.intents import new_request_id
from haproxy_py.cluster.records import ClusterView, Request
from haproxy_py.cluster.store import Store
from tests.support.stand_in import StandInAgent
from tests.support.wait import eventually_async

T = TypeVar("T")
VIP1, VIP2, VIP3 = "198.18.200.1", "198.18.200.2", "198.18.200.3"


async def view_where(
    store: Store, predicate: Callable[[ClusterView], bool], within: float = 20.0
) -> ClusterView:
    async def check() -> ClusterView | None:
        view = await store.read_view()
        return view if predicate(view) else None

    return await eventually_async(check, within, "a view where the predicate holds")


def etcd_config(endpoints: list[str], timeout: float = 1.0) -> EtcdConfig:
    return EtcdConfig(endpoints=tuple(endpoints), timeout=timeout)


def cluster_config(
    name: str,
    *vips: str,
    mode: str = "active-standby",
    failback: bool = False,
    hold: float = 30.0,
) -> ClusterConfig:
    return ClusterConfig(
        name=name,
        mode=mode,
        vips=vips or (VIP1,),
        failback=failback,
        failback_hold=hold,
    )


def controller_config(ident: str, ttl: int = 2) -> ControllerConfig:
    return ControllerConfig(
        id=ident,
        lease_ttl=ttl,
        keepalive_interval=ttl / 4,
        tick=0.2,
        release_timeout=3.0,
        event_history=50,
        request_history=20,
        metrics=None,
    )


class Running:
    """A controller running in this event loop, with its own store connection."""

    def __init__(self, etcd: EtcdConfig, cluster: ClusterConfig, ident: str, ttl: int) -> None:
        self.store = Store(etcd, cluster.name)
        self.controller = Controller(self.store, cluster, controller_config(ident, ttl), ident)
        self.task = asyncio.create_task(self.controller.run())

    async def stop(self) -> None:
        self.controller.stop()
        await asyncio.wait_for(self.task, 20)
        await self.store.close()


@asynccontextmanager
async def scene(
    etcd: EtcdConfig,
    cluster: ClusterConfig,
    nodes: dict[str, int],
    controllers: int = 1,
    ttl: int = 2,
) -> AsyncIterator[tuple[Store, dict[str, StandInAgent], list[Running]]]:
    """Agents (name -> priority), controllers and an observer store, all torn down after."""
    async with AsyncExitStack() as stack:
        observer = Store(etcd, cluster.name)
        stack.push_async_callback(observer.close)
        agents: dict[str, StandInAgent] = {}
        for name, priority in nodes.items():
            agent = StandInAgent(etcd, cluster.name, name, priority, ttl)
            stack.push_async_callback(agent.close)
            agents[name] = await agent.start()
        running: list[Running] = []
        for i in range(controllers):
            ctl = Running(etcd, cluster, f"ctl{i}", ttl)
            stack.push_async_callback(_stop_quietly, ctl)
            running.append(ctl)
        yield observer, agents, running


async def _stop_quietly(ctl: Running) -> None:
    if not ctl.task.done():
        await ctl.stop()


def owned_by(*pairs: tuple[str, str]) -> Callable[[ClusterView], bool]:
    def check(view: ClusterView) -> bool:
        return all(
            (a := view.vips.get(vip)) is not None and a.node == node and a.state == "assigned"
            for vip, node in pairs
        )

    return check


async def submit(store: Store, kind: str, **fields: str) -> Request:
    request = Request(
        id=new_request_id(time.time()),
        kind=kind,
        created=time.time(),
        **fields,
    )
    await requestflow.submit(store, request)
    return await requestflow.wait_result(store, request.id, 20)
