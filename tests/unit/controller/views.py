"""Named factories for cluster views, so decision tests read like the situation they test."""

from __future__ import annotations

from dataclasses import replace

from haproxy_py.cluster.records import (
    ClusterPolicy,
    ClusterView,
    Event,
    Mode,
    NodeRecord,
    Request,
    VipAssignment,
)

NOW = 1_800_000_000.0
VIP1, VIP2, VIP3, VIP4 = "198.18.100.1", "198.18.100.2", "198.18.100.3", "198.18.100.4"


def lease_of(name: str) -> int:
    return 1000 + sum(map(ord, name))


def node(
    name: str, priority: int = 100, healthy: bool = True, since: float = NOW - 3600
) -> NodeRecord:
    lease = lease_of(name)
    return NodeRecord(
        name=name,
        priority=priority,
        healthy=healthy,
        healthy_since=since if healthy else None,
        lease=lease,
    )


def held(
    vip: str,
    owner: str,
    state: str = "assigned",
    cause: str = "initial",
    move_to: str | None = None,
    request: str | None = None,
    releasing_since: float | None = None,
    revision: int = 10,
) -> VipAssignment:
    return VipAssignment(
        vip=vip,
        node=owner,
        epoch=1,
        since=NOW - 600,
        state=state,
        cause=cause,
        move_to=move_to,
        request=request,
        releasing_since=releasing_since,
        lease=lease_of(owner),
        mod_revision=revision,
    )


def settings(
    *vips: str,
    mode: Mode = "active-standby",
    failback: bool = False,
    hold: float = 30.0,
    paused: bool = False,
    drained: tuple[str, ...] = (),
) -> ClusterPolicy:
    return ClusterPolicy(
        mode=mode,
        vips=vips or (VIP1,),
        failback=failback,
        failback_hold=hold,
        paused=paused,
        drained=drained,
        mod_revision=5,
    )


def view(
    nodes: list[NodeRecord],
    vips: list[VipAssignment] = (),
    config: ClusterPolicy | None = None,
    requests: list[Request] = (),
    events: list[Event] = (),
    junk_vips: tuple[str, ...] = (),
) -> ClusterView:
    return ClusterView(
        cluster="t",
        revision=100,
        nodes={n.name: n for n in nodes},
        vips={a.vip: a for a in vips},
        occupied=frozenset([a.vip for a in vips] + list(junk_vips)),
        settings=config or settings(),
        requests=tuple(requests),
        events=tuple(events),
        epoch=len(events),
    )


def request(
    kind: str,
    vip: str | None = None,
    target: str | None = None,
    node_name: str | None = None,
    rid: str = "r1",
) -> Request:
    return Request(
        id=rid,
        kind=kind,
        vip=vip,
        target=target,
        node=node_name,
        created=NOW - 1,
        mod_revision=50,
    )


def with_nodes(v: ClusterView, *nodes: NodeRecord) -> ClusterView:
    return replace(v, nodes={**v.nodes, **{n.name: n for n in nodes}})
