"""The etcd part of `hactl status`, as plain data (pure: no I/O, no clock).

`etcd_view` turns the members' own answers into rows: role, reachability,
database size and in-use size, raft index lag behind the leader; active
alarms; warnings (no leader, a member unreachable, a database past 70 % of its
quota). `etcd_json` is the `etcd` key of `status -o json` (docs/hactl.md);
`etcd_table` prints the same for people, alarms in red.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import click

from haproxy_py.cluster.etcdmembers import Alarm, ClusterStatus
from haproxy_py.hactl.table import Cell, render

QUOTA_WARNING = 0.7  # past this share of the quota, say so: at 100 % etcd refuses every write


@dataclass(frozen=True)
class MemberRow:
    name: str
    endpoint: str | None
    role: str | None  # leader, follower, or None when it did not answer
    reachable: bool
    db_size: int | None
    db_in_use: int | None
    raft_index: int | None
    raft_lag: int | None  # the leader's raft index minus this member's
    quota: int | None
    error: str | None


@dataclass(frozen=True)
class EtcdView:
    members: tuple[MemberRow, ...]
    alarms: tuple[Alarm, ...]
    leader: str | None
    quota: int | None
    usage: float | None  # the fullest member's database size over its quota
    warnings: tuple[str, ...]


def etcd_view(status: ClusterStatus) -> EtcdView:
    leader = next((s for s in status.members if s.leader), None)
    rows = []
    for s in sorted(status.members, key=lambda s: s.member.name):
        lag = None
        if leader is not None and leader.raft_index is not None and s.raft_index is not None:
            lag = max(0, leader.raft_index - s.raft_index)
        role = None if not s.reachable else "leader" if s.leader else "follower"
        rows.append(
            MemberRow(
                s.member.name,
                s.member.endpoint,
                role,
                s.reachable,
                s.db_size,
                s.db_in_use,
                s.raft_index,
                lag,
                s.quota,
                s.error,
            )
        )
    fullest = max(
        (r for r in rows if r.db_size is not None and r.quota),
        key=lambda r: (r.db_size or 0) / (r.quota or 1),
        default=None,
    )
    usage = None if fullest is None else (fullest.db_size or 0) / (fullest.quota or 1)
    warnings = []
    if leader is None:
        warnings.append("etcd has no leader that answers: nothing can be written until it has")
    for row in rows:
        if not row.reachable:
            reason = (row.error or "no answer").rsplit(": ", 1)[-1]
            warnings.append(f"etcd member {row.name} ({row.endpoint or '-'}) unreachable: {reason}")
    if fullest is not None and usage is not None and usage >= QUOTA_WARNING:
        warnings.append(
            f"etcd database at {usage:.0%} of its {size(fullest.quota)} quota on {fullest.name}: "
            "at 100 % etcd refuses every write and no VIP can move; "
            "run `hactl etcd compact`, then `hactl etcd defrag`"
        )
    return EtcdView(
        members=tuple(rows),
        alarms=status.alarms,
        leader=leader.member.name if leader else None,
        quota=fullest.quota if fullest else None,
        usage=usage,
        warnings=tuple(warnings),
    )


def etcd_json(view: EtcdView) -> dict[str, Any]:
    return {
        "leader": view.leader,
        "quota": view.quota,
        "usage": None if view.usage is None else round(view.usage, 4),
        "members": [
            {
                "name": m.name,
                "endpoint": m.endpoint,
                "role": m.role,
                "reachable": m.reachable,
                "db_size": m.db_size,
                "db_in_use": m.db_in_use,
                "raft_index": m.raft_index,
                "raft_lag": m.raft_lag,
                "quota": m.quota,
                "error": m.error,
            }
            for m in view.members
        ],
        "alarms": [{"member": a.member, "alarm": a.kind} for a in view.alarms],
        "warnings": list(view.warnings),
    }


def etcd_table(view: EtcdView) -> str:
    quota = f"quota {size(view.quota)}" if view.quota else "quota unknown"
    parts = [f"etcd: {len(view.members)} members, leader {view.leader or 'none'}, {quota}"]
    parts.append(
        render(
            ["MEMBER", "ENDPOINT", "ROLE", "REACHABLE", "DB", "IN USE", "RAFT LAG"],
            [_member_cells(m) for m in view.members],
        )
    )
    for alarm in view.alarms:
        parts.append(
            click.style(
                f"ALARM {alarm.kind} on {alarm.member}: etcd refuses writes until it is cleared "
                "(compact, defrag, then `hactl etcd disarm`)",
                fg="red",
                bold=True,
            )
        )
    for warning in view.warnings:
        parts.append(click.style(f"warning: {warning}", fg="yellow"))
    return "\n".join(parts)


def _member_cells(m: MemberRow) -> list[Cell | str]:
    role = Cell(m.role or "-", "green" if m.role == "leader" else None)
    reachable = Cell("yes", "green") if m.reachable else Cell("no", "red")
    return [
        m.name,
        m.endpoint or "-",
        role,
        reachable,
        size(m.db_size),
        size(m.db_in_use),
        "-" if m.raft_lag is None else str(m.raft_lag),
    ]


def size(value: int | None) -> str:
    """Bytes for people: `20 KiB`, `1.5 MiB`, `2.0 GiB`."""
    if value is None:
        return "-"
    amount = float(value)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if amount < 1024 or unit == "GiB":
            return f"{amount:.0f} {unit}" if unit in ("B", "KiB") else f"{amount:.1f} {unit}"
        amount /= 1024
    raise AssertionError("unreachable")  # pragma: no cover
