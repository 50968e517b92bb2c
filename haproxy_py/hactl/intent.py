"""hactl's requests to the controller, checked against a snapshot first (pure).

hactl never moves an IP: it writes `requests/<id>` and reports the result the
controller writes back. The checks here only turn mistakes the controller
would refuse anyway (unknown node, no leader) into an immediate, precise
message; the controller stays the judge of everything else.
"""

from __future__ import annotations

from collections.abc import Iterable

from haproxy_py.cluster.intents import new_request_id
from haproxy_py.cluster.records import ClusterView, Request, RequestKind, RequestResult
from haproxy_py.hactl.errors import NoLeader, NotFound, Refused
from haproxy_py.hactl.view import milliseconds


def new_request(
    kind: RequestKind,
    now: float,
    *,
    vip: str | None = None,
    target: str | None = None,
    node: str | None = None,
) -> Request:
    """A request with a unique id that sorts by creation time (`by` is set where it is sent)."""
    return Request(
        id=new_request_id(now),
        kind=kind,
        vip=vip,
        target=target,
        node=node,
        created=now,
    )


def requester(identity: str | None, user: str, host: str) -> str:
    """Who asks, for the audit trail: the etcd identity (the client certificate's name, the
    only part etcd vouches for) first, the local account after it as a hint."""
    local = f"{user}@{host}"
    return f"{identity} ({local})" if identity else local


def require_leader(view: ClusterView, action: str) -> str:
    """The active controller's id; NoLeader says why `action` cannot run without one."""
    if view.leader is None:
        raise NoLeader(
            f"no controller leader in cluster {view.cluster!r}: {action} needs an active "
            "controller to carry it out (is ha-controller running? see `hactl status`)"
        )
    return view.leader.id


def require_node(view: ClusterView, name: str, *, include_drained: bool = False) -> None:
    known = view.known_nodes() if include_drained else frozenset(view.nodes)
    if name not in known:
        raise NotFound(f"unknown node {name!r} (known: {_listing(known)})")


def require_vip(view: ClusterView, vip: str) -> None:
    known = view.known_vips()
    if vip not in known:
        raise NotFound(f"unknown VIP {vip!r} (known: {_listing(known)})")


def check_failover(view: ClusterView, vip: str | None, target: str | None) -> None:
    """Reject a failover naming something that does not exist, or with nobody to run it."""
    require_leader(view, "failover")
    if vip is not None:
        require_vip(view, vip)
    if target is not None:
        require_node(view, target)


def moving(view: ClusterView, vip: str | None) -> list[str]:
    """The VIPs a move request affects: in active-standby all VIPs move together."""
    configured = list(view.settings.vips) if view.settings else sorted(view.vips)
    if vip is not None and view.settings is not None and view.settings.mode == "active-active":
        return [vip]
    return configured


def failover_prompt(view: ClusterView, vip: str | None, target: str | None) -> str:
    where = target if target else "the best other healthy node"
    held = ", ".join(f"{v} (now on {view.owner(v) or 'nobody'})" for v in moving(view, vip))
    return f"Move {held} to {where}?"


def describe_result(request: Request, result: RequestResult) -> list[str]:
    """One line per moved VIP, e.g. `198.18.0.100: node-a -> node-b in 38 ms`.

    Raises Refused with the controller's reason unless the request is done.
    """
    if result.status != "done":
        reason = result.message or "no reason given"
        if result.status == "refused":
            raise Refused(f"the controller refused the {request.kind} request: {reason}")
        raise Refused(f"the {request.kind} request failed: {reason}")
    timing = ""
    if result.duration_ms is not None:
        timing = f" in {milliseconds(result.duration_ms)}"
        if result.gap_ms is not None:
            timing += f" (VIP unowned for {milliseconds(result.gap_ms)})"
    return [f"{m.vip}: {m.source or '-'} -> {m.target}{timing}" for m in result.moves]


def _listing(names: Iterable[str]) -> str:
    ordered = sorted(names)
    return ", ".join(ordered) if ordered else "none"
