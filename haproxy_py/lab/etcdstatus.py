"""What etcd's members say of themselves (leader, DB size), asked over gRPC as the lab's root.

The HTTP gateway refuses these calls once etcd's authentication is on, so the lab asks
through the same maintenance calls `hactl status` uses.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from haproxy_py.cluster import maintenance
from haproxy_py.cluster.store import Store
from haproxy_py.lab import control
from haproxy_py.lab.layout import CLUSTER


@dataclass(frozen=True)
class EtcdStatus:
    leader: str | None
    db_size: dict[str, int]  # member -> bytes


def etcd_status(lab: control.Lab) -> EtcdStatus:
    """The leading member and each reachable member's DB size."""

    async def ask() -> maintenance.ClusterStatus:
        async with Store(lab.etcd_config(), CLUSTER) as store:
            return await maintenance.cluster_status(store)

    members = [s for s in asyncio.run(ask()).members if s.reachable]
    leader = next((s.member.name for s in members if s.leader), None)
    return EtcdStatus(leader, {s.member.name: s.db_size for s in members if s.db_size is not None})
