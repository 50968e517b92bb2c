"""etcd members, their status and the cluster's alarms, as plain values.

`maintenance` fills them in from etcd; `hactl.etcdview` renders them without
importing the client that asks.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Member:
    id: int
    name: str
    endpoint: str | None  # host:port of its first client URL (None: it advertises none)
    url: str | None  # that URL as the member advertises it (scheme included)


@dataclass(frozen=True)
class MemberStatus:
    """What one member says about itself; every figure is None when it did not answer."""

    member: Member
    reachable: bool
    leader: bool
    version: str | None = None
    db_size: int | None = None  # bytes the database file takes (what the quota limits)
    db_in_use: int | None = None  # bytes in use; the rest is what defragmenting returns
    raft_index: int | None = None
    quota: int | None = None  # --quota-backend-bytes, from the member's own /metrics
    error: str | None = None


@dataclass(frozen=True)
class Alarm:
    member: str  # the member's name, or its hex ID if it is no longer listed
    kind: str  # NOSPACE or CORRUPT


@dataclass(frozen=True)
class ClusterStatus:
    members: tuple[MemberStatus, ...]
    alarms: tuple[Alarm, ...]
