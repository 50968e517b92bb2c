"""This node's record, `nodes/<name>`: what goes in it and when it is written.

etcd holds agreement, not telemetry: the record is rewritten when something
the controller or an operator decides on changes (liveness, the readiness
score, the VIPs held, given up, let go of or refused, the backend servers up),
never for load
figures such as connection counts, which live in `/metrics`. A write that
failed is retried by the reconcile timer. In BGP mode the first write under a
new lease waits `first_wait` (the first liveness verdict's time), so that a
node's return is one record that says what its first probes found, not three
(registered, then the backends counted, then live).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from agent.failsafe import Outage
from agent.state import AgentCore
from haproxy_py.cluster.config import NodeConfig
from haproxy_py.cluster.records import NodeRecord
from haproxy_py.cluster.storeapi import KVStore

Write = Callable[[], Awaitable[None]]


class Registration:
    """Builds `nodes/<name>` from the core's state at write time and queues its writes."""

    def __init__(
        self,
        node: NodeConfig,
        version: str,
        core: AgentCore,
        store: KVStore,
        enqueue: Callable[[Write], None],
        first_wait: float = 0.0,
    ) -> None:
        self.node = node
        self.version = version
        self.core = core
        self.store = store
        self.enqueue = enqueue
        self.key = store.schema.node(node.name)
        self.servers: tuple[int, int] = (0, 0)  # backend servers up, in total
        self.healthy_since: float | None = None  # unix time: the controller's failback hold
        self.failed = False  # the last write did not land: the reconcile timer retries
        self.failsafe: tuple[float, float, int] | None = None  # the last outage it bridged
        # a held VIP is listed once its address is set and announced (`Effects.shown`)
        self.shown: Callable[[str], bool] = lambda vip: True
        self.bgp: dict[str, str] = {}  # BGP mode: peer -> session and BFD state (agent.bgpside)
        self._pending = False
        self.first_wait = first_wait
        self._written = 0  # the lease the record was last written under

    def health_changed(self, healthy: bool) -> None:
        self.healthy_since = time.time() if healthy else None

    def servers_seen(self, up: int, total: int) -> bool:
        """Record the backend server figures; True when they changed (worth a write)."""
        changed = (up, total) != self.servers
        self.servers = (up, total)
        return changed

    def record(self, lease: int) -> NodeRecord:
        core, node = self.core, self.node
        ready, pools = core.readiness
        return NodeRecord(
            name=node.name,
            address=node.address,
            interface=node.interface,
            priority=node.priority,
            version=self.version,
            healthy=core.health.healthy,
            healthy_since=self.healthy_since,
            backends_up=self.servers[0],
            backends_total=self.servers[1],
            vips=tuple(sorted(v for v in core.held if self.shown(v))),
            updated=time.time(),
            lease=lease,
            ready=ready,
            pools=pools,
            unheld=tuple(sorted(core.given_up)),
            stopping=core.stopping,
            released=dict(core.acked),
            refused=tuple(sorted(core.refused)),
            failsafe=self.failsafe,
            bgp=self.bgp,
            lapse=core.timing.lease_ttl if core.timing.lapse else 0,
        )

    def outage_bridged(self, outage: Outage) -> None:
        """etcd answers again after the failsafe kept VIPs: say so in the node record."""
        ago = time.monotonic() - time.time()
        self.failsafe = (outage.since - ago, outage.until - ago, outage.rounds)
        self.publish()

    def publish(self) -> None:
        """Queue one write of the record as it will be at write time (coalesced)."""
        if self._pending:
            return
        self._pending = True

        async def write() -> None:
            self._pending = False
            lease = self.core.lease_id
            if lease is None:
                return
            self.failed = True  # until the put succeeds
            await self.store.put(self.key, self.record(lease).to_json(), lease=lease)
            self.failed = False
            self._written = lease

        lease = self.core.lease_id
        if self.first_wait and lease is not None and lease != self._written:
            asyncio.get_running_loop().call_later(self.first_wait, self.enqueue, write)
        else:
            self.enqueue(write)
