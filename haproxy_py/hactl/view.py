"""What `hactl status` and `hactl history` show, as plain data (pure: no I/O, no clock).

`status_view` turns one `ClusterView` snapshot into rows; `status_json`,
`status_table`, `history_json` and `history_table` print them. The JSON keys
are a stable interface for scripts (listed in docs/hactl.md): new keys may be
added, existing ones keep their name and meaning.

Roles: `draining` (the operator drained it), `down` (its proxy is unhealthy,
or it is drained and no longer registered), `active` (holds a VIP),
`standby` (healthy, holds none).

VIP states besides `assigned`, `releasing` and `unassigned`: `released` (its
owner acknowledged letting go; the controller gives it on), `orphaned` (its
owner is not registered under the assignment's lease, or the key has none;
the controller reassigns it once etcd confirms that lease is gone). Those, a
leader key without a lease and VIPs a node refuses (not in its own
`allowed_vips`) are also listed under `repairs`.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import click

from haproxy_py.cluster.records import ClusterView, Event, vip_order
from haproxy_py.hactl.table import Cell, printable, render

ROLE_COLOURS = {"active": "green", "standby": "cyan", "draining": "yellow", "down": "red"}


@dataclass(frozen=True)
class NodeRow:
    name: str
    address: str | None
    role: str
    healthy: bool
    registered: bool
    vips: tuple[str, ...]
    priority: int | None
    backends_up: int
    backends_total: int
    ready: int
    pools: int
    lease_left: float | None
    version: str | None
    # the last etcd outage through which the failsafe kept its VIPs: (since, until, rounds)
    failsafe: tuple[float, float, int] | None = None
    refused: tuple[str, ...] = ()
    bgp: Mapping[str, str] = field(default_factory=dict)  # BGP mode: peer -> session, BFD


@dataclass(frozen=True)
class VipRow:
    address: str
    owner: str | None
    state: str
    since: float | None
    cause: str | None
    move_to: str | None
    announcers: tuple[str, ...] | None = None  # BGP mode: the nodes permitted to announce it


@dataclass(frozen=True)
class StatusView:
    cluster: str
    mode: str | None
    paused: bool
    epoch: int
    controller: str | None
    controller_since: float | None
    nodes: tuple[NodeRow, ...]
    vips: tuple[VipRow, ...]
    problems: tuple[str, ...]
    repairs: tuple[str, ...] = ()


def bgp_mode(view: ClusterView) -> bool:
    return view.settings is not None and view.settings.mode == "bgp"


def status_view(
    view: ClusterView,
    lease_left: Mapping[str, float | None],
    announcers: Mapping[str, tuple[str, ...]] | None = None,
) -> StatusView:
    """Rows for every registered or drained node and every configured or assigned VIP.

    `lease_left` maps node name to the seconds its lease has left (None: unknown);
    `announcers` (BGP mode) VIP -> the nodes `announce/` permits to announce it.
    """
    settings = view.settings
    drained = set(settings.drained) if settings else set()
    nodes = []
    for name in sorted(view.known_nodes()):
        record = view.nodes.get(name)
        vips = view.vips_of(name)
        if announcers is not None:
            vips = tuple(v for v in vip_order(announcers) if name in announcers[v])
        healthy = record is not None and record.healthy
        if name in drained:
            role = "draining" if record is not None else "down"
        elif not healthy:
            role = "down"
        else:
            role = "active" if vips else "standby"
        nodes.append(
            NodeRow(
                name=name,
                address=record.address if record else None,
                role=role,
                healthy=healthy,
                registered=record is not None,
                vips=vips,
                priority=record.priority if record else None,
                backends_up=record.backends_up if record else 0,
                backends_total=record.backends_total if record else 0,
                ready=record.ready if record else 0,
                pools=record.pools if record else 0,
                lease_left=lease_left.get(name),
                version=record.version if record else None,
                failsafe=record.failsafe if record else None,
                refused=record.refused if record else (),
                bgp=record.bgp if record else {},
            )
        )
    vip_rows: list[VipRow] = []
    for address in vip_order(view.known_vips()):
        assignment = view.vips.get(address)
        if announcers is not None:
            by = announcers.get(address, ())
            state = "announced" if by else "withdrawn"
            vip_rows.append(VipRow(address, None, state, None, None, None, by))
        elif assignment is None:
            state = "unreadable" if address in view.occupied else "unassigned"
            vip_rows.append(VipRow(address, None, state, None, None, None))
        else:
            vip_rows.append(
                VipRow(
                    address=address,
                    owner=assignment.node,
                    state=_vip_state(view, address),
                    since=assignment.since or None,
                    cause=assignment.cause,
                    move_to=assignment.move_to,
                )
            )
    leader = view.leader
    return StatusView(
        cluster=view.cluster,
        mode=settings.mode if settings else None,
        paused=settings.paused if settings else False,
        epoch=view.epoch,
        controller=leader.id if leader else None,
        controller_since=leader.since if leader else None,
        nodes=tuple(nodes),
        vips=tuple(vip_rows),
        problems=view.problems,
        repairs=tuple(_repairs(view)),
    )


def _vip_state(view: ClusterView, vip: str) -> str:
    if view.acknowledged(vip):
        return "released"
    if view.stale(vip):
        return "orphaned"
    return view.vips[vip].state


def _repairs(view: ClusterView) -> list[str]:
    """States the controller repairs by itself, shown while they last."""
    found = []
    for vip, a in sorted(view.vips.items()):
        if view.stale(vip) and not view.acknowledged(vip):
            why = "has no lease" if a.lease == 0 else f"names a lease {a.node} does not hold"
            found.append(
                f"vips/{vip}: its assignment to {a.node} {why}; the controller reassigns it"
            )
    if view.leader is not None and view.leader.lease == 0:
        found.append("controller/leader has no lease; the next controller to campaign replaces it")
    for name, record in sorted(view.nodes.items()):
        for vip in record.refused:
            found.append(f"{name} refuses {vip}: not in its own allowed_vips")
    return found


def status_json(status: StatusView) -> dict[str, Any]:
    return {
        "cluster": status.cluster,
        "mode": status.mode,
        "paused": status.paused,
        "epoch": status.epoch,
        "controller": status.controller,
        "controller_since": iso(status.controller_since),
        "nodes": [
            {
                "name": n.name,
                "address": n.address,
                "role": n.role,
                "healthy": n.healthy,
                "registered": n.registered,
                "vips": list(n.vips),
                "refused": list(n.refused),
                "bgp": dict(n.bgp),
                "priority": n.priority,
                "backends_up": n.backends_up,
                "backends_total": n.backends_total,
                "ready": n.ready,
                "pools": n.pools,
                "lease_left": n.lease_left,
                "version": n.version,
                "failsafe": None
                if n.failsafe is None
                else {
                    "since": iso(n.failsafe[0]),
                    "until": iso(n.failsafe[1]),
                    "seconds": round(n.failsafe[1] - n.failsafe[0], 3),
                    "rounds": n.failsafe[2],
                },
            }
            for n in status.nodes
        ],
        "vips": [
            {
                "address": v.address,
                "owner": v.owner,
                "state": v.state,
                "since": iso(v.since),
                "cause": v.cause,
                "move_to": v.move_to,
                **({} if v.announcers is None else {"announcers": list(v.announcers)}),
            }
            for v in status.vips
        ],
        "problems": list(status.problems),
        "repairs": list(status.repairs),
    }


def status_table(status: StatusView, now: float) -> str:
    leader = status.controller or "none"
    if status.controller and status.controller_since:
        leader += f" (since {clock(status.controller_since)})"
    header = printable(
        f"Cluster: {status.cluster}  mode: {status.mode or 'unknown'}  "
        f"controller: {leader}  epoch: {status.epoch}  "
        f"maintenance: {'on' if status.paused else 'off'}"
    )
    parts = [_bold(header)]
    if status.controller is None:
        parts.append(_warn("No controller leader: nothing fails over until one is elected."))
    if status.paused:
        parts.append(_warn("Maintenance mode: on (no automatic failover; `hactl resume` ends it)"))
    parts.append("")
    if status.nodes:
        parts.append(
            render(
                ["NODE", "ADDRESS", "ROLE", "PROXY", "VIPS", "BACKENDS", "READY", "LEASE", "PRIO"],
                [_node_cells(n) for n in status.nodes],
            )
        )
    else:
        parts.append("No nodes registered.")
    for n in status.nodes:
        if n.failsafe is not None:
            since, until, rounds = n.failsafe
            parts.append(
                printable(
                    f"failsafe: {n.name} kept {', '.join(n.vips) or 'its VIPs'} through an etcd "
                    f"outage from {clock(since)} to {clock(until)} ({until - since:.1f} s, "
                    f"{rounds} rounds)"
                )
            )
    for n in status.nodes:
        for peer, state in sorted(n.bgp.items()):
            parts.append(printable(f"bgp: {n.name} -> {peer}: {state}"))
    parts.append("")
    if status.vips and status.mode == "bgp":
        rows = [[v.address, ", ".join(v.announcers or ()) or "nobody"] for v in status.vips]
        parts.append(render(["VIP", "ANNOUNCED BY"], rows))
    elif status.vips:
        parts.append(
            render(["VIP", "OWNER", "STATE", "SINCE"], [_vip_cells(v, now) for v in status.vips])
        )
    else:
        parts.append("No VIPs configured.")
    for problem in status.problems:
        parts.append(_warn(printable(f"unreadable key {problem}")))
    for repair in status.repairs:
        parts.append(_warn(printable(repair)))
    return "\n".join(parts)


def nodes_table(answers: Sequence[Mapping[str, Any]], now: float) -> str:
    """What each node says of itself while etcd does not answer (`hactl.peers`)."""
    rows: list[list[Cell | str]] = []
    for a in answers:
        since = a.get("failsafe_since")
        if a.get("error"):
            state = f"no answer: {a['error']}"
        elif isinstance(since, int | float):
            state = f"failsafe since {clock(since)} ({ago(now - since)})"
        else:
            state = "fenced or holds nothing" if not a.get("vips") else "etcd reachable"
        rows.append(
            [
                str(a.get("name")),
                str(a.get("address")),
                ", ".join(a.get("vips") or []) or "-",
                printable(state),
            ]
        )
    head = _warn("etcd does not answer; each node's own account (its peer endpoint):")
    return head + "\n" + render(["NODE", "ADDRESS", "VIPS", "STATE"], rows)


def history_json(events: Sequence[Event]) -> list[dict[str, Any]]:
    return [
        {
            "seq": e.seq,
            "time": iso(e.time),
            "vip": e.vip,
            "from": e.source,
            "to": e.target,
            "cause": e.cause,
            "gap_ms": e.gap_ms,
            "request": e.request,
        }
        for e in events
    ]


def history_table(events: Sequence[Event]) -> str:
    if not events:
        return "No events yet."
    rows = [
        [
            str(e.seq),
            iso(e.time) or "-",
            e.vip,
            e.source or "-",
            e.target or "-",
            e.cause,
            "-" if e.gap_ms is None else milliseconds(e.gap_ms),
        ]
        for e in events
    ]
    return render(["EPOCH", "TIME", "VIP", "FROM", "TO", "CAUSE", "GAP"], rows)


def _node_cells(n: NodeRow) -> list[Cell | str]:
    proxy = Cell("healthy", "green") if n.healthy else Cell("unhealthy", "red")
    if not n.registered:
        proxy = Cell("gone", "red")
    return [
        n.name,
        n.address or "-",
        Cell(n.role, ROLE_COLOURS.get(n.role)),
        proxy,
        ",".join(n.vips) or "-",
        f"{n.backends_up}/{n.backends_total}" if n.registered else "-",
        f"{n.ready}/{n.pools}" if n.registered else "-",
        "-" if n.lease_left is None else f"{n.lease_left:.0f}s",
        "-" if n.priority is None else str(n.priority),
    ]


def _vip_cells(v: VipRow, now: float) -> list[Cell | str]:
    state = v.state if v.move_to is None else f"{v.state} -> {v.move_to}"
    colour = {"assigned": "green", "releasing": "yellow"}.get(v.state, "red")
    since = "-"
    if v.since is not None:
        since = f"{clock(v.since)} ({ago(now - v.since)})"
    return [v.address, v.owner or "-", Cell(state, colour), since]


def milliseconds(value: float) -> str:
    """`38 ms`, or `0.1 ms` below 10 ms where a whole number would hide the size."""
    return f"{value:.1f} ms" if value < 10 else f"{value:.0f} ms"


def iso(ts: float | None) -> str | None:
    """Unix time as ISO 8601 UTC with milliseconds, e.g. 2026-11-25T18:04:01.123Z."""
    if ts is None:
        return None
    moment = dt.datetime.fromtimestamp(ts, dt.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def clock(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%H:%M:%S")


def ago(seconds: float) -> str:
    seconds = max(seconds, 0.0)
    if seconds < 60:
        return f"{seconds:.0f}s ago"
    if seconds < 3600:
        return f"{seconds / 60:.0f}m ago"
    if seconds < 86400:
        return f"{seconds / 3600:.0f}h ago"
    return f"{seconds / 86400:.0f}d ago"


def _bold(text: str) -> str:
    return click.style(text, bold=True)


def _warn(text: str) -> str:
    return click.style(text, fg="yellow")
