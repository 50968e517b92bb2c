"""Shared bits for the cluster integration tests: waiting for a view, config builders."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from haproxy_py.cluster.config import ClusterConfig, ControllerConfig, EtcdConfig
from haproxy_py.cluster.records import ClusterView
from haproxy_py.cluster.store import Store
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
