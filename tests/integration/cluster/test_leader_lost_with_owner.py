"""#22: the leading controller dies with the VIP owner's node while a stolen key keeps both
leases alive (etcd does not authorise LeaseKeepAlive). On a real etcd, with two controllers
in this event loop and a peer client that plays the probes (node a and controller ctl0 are
gone; `tests/integration/security/test_peer_endpoint.py` runs the real mutual TLS): the
standby deposes the leader, revokes the owner's lease behind a `revoked/` marker, leads,
and assigns the VIP only once the embargo has passed since the revoke."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from typing import cast

from controller.loop import Controller
from controller.probes import Prober
from haproxy_py.cluster.config import EtcdConfig
from haproxy_py.cluster.controlkeys import PeerAddress
from haproxy_py.cluster.peerlink import PeerClient, PeerError
from haproxy_py.cluster.store import Store
from haproxy_py.cluster.timing import Timing, fence_deadline
from tests.integration.cluster.helpers import (
    VIP1,
    cluster_config,
    controller_config,
    etcd_config,
    owned_by,
    view_where,
)
from tests.support.etcd import EtcdCluster
from tests.support.stand_in import StandInAgent

TIMING = Timing(lease_ttl=2, keepalive_interval=0.25, address_lifetime=1.0, fence_margin=0.2)


class Peers:
    """Answers every probe except those of the names in `dead`."""

    def __init__(self) -> None:
        self.dead: set[str] = set()

    async def post(self, address: str, port: int, expected: str, path: str, body: dict) -> object:
        if expected in self.dead:
            raise PeerError("connection refused")
        return {"nonce": body["nonce"]}


async def _keep_alive(store: Store, lease: int) -> None:
    """The thief: keeps `lease` alive with a credential of its own."""
    while True:
        await store.keepalive(lease)
        await asyncio.sleep(0.25)


async def test_a_standby_deposes_a_dead_leader_and_moves_the_vip_after_the_embargo(
    etcd: EtcdCluster,
) -> None:
    cfg, cluster = etcd_config(etcd.endpoints), cluster_config("lost", VIP1)
    peers = Peers()
    stores = [Store(cfg, "lost") for _ in range(4)]
    observer, thief = stores[0], stores[1]
    a = await StandInAgent(cfg, "lost", "a", priority=200).start()
    b = await StandInAgent(cfg, "lost", "b", priority=100, address="198.18.0.2").start()
    controllers = []
    for i, store in enumerate(stores[2:]):
        prober = Prober(store, cast(PeerClient, peers), 9734, TIMING, f"ctl{i}")
        ctl = Controller(store, cluster, controller_config(f"ctl{i}"), f"ctl{i}", prober=prober)
        ctl.election.peer = PeerAddress("198.18.0.1", 9735, f"controller-ctl{i}")
        controllers.append(ctl)
    tasks = [asyncio.create_task(controllers[0].run())]
    stolen: list[asyncio.Task[None]] = []
    try:
        await view_where(observer, lambda v: owned_by((VIP1, "a"))(v) and v.leader is not None)
        tasks.append(asyncio.create_task(controllers[1].run()))
        await asyncio.sleep(1.0)  # the standby has probed both
        leader = (await observer.read_view()).leader
        assert leader is not None and leader.id == "ctl0"
        # node a dies whole: its agent and the leading controller, no clean stop...
        await a.crash()
        setattr(controllers[0].election, "resign", _nothing)  # noqa: B010 (a method, replaced)
        tasks[0].cancel()
        peers.dead = {"agent-a", "controller-ctl0"}
        killed = time.monotonic()
        # ... while a stolen key keeps both leases alive
        stolen = [
            asyncio.create_task(_keep_alive(thief, lease)) for lease in (a.lease, leader.lease)
        ]
        moved = await view_where(observer, owned_by((VIP1, "b")), within=20)
        took = time.monotonic() - killed
    finally:
        for task in [*stolen, *tasks]:
            task.cancel()
        for ctl in controllers:
            ctl.stop()
        with contextlib.suppress(BaseException):
            await asyncio.gather(*tasks, *stolen, return_exceptions=True)
        for closing in (a, b):
            await closing.close()
        for store in stores:
            await store.close()
    assert moved.leader is not None and moved.leader.id == "ctl1"
    assert controllers[1].prober is not None and controllers[1].prober.depositions == 1
    assert controllers[1].metrics.depositions.values.get((), 0) == 1  # and counted for metrics
    marker = await _marker(cfg, a.lease)
    (event,) = [e for e in moved.events if e.target == "b"]
    # the assignment came at least the embargo after the revoke (the marker precedes it)
    assert event.time - marker["at"] >= fence_deadline(TIMING), (event.time, marker)
    assert marker["by"] == "ctl1" and marker["wait"] == fence_deadline(TIMING)
    print(f"leader and owner lost, both leases kept alive: VIP on b after {took:.2f} s")
    assert took < 10


async def _nothing() -> None:
    """A killed controller does not step down."""


async def _marker(cfg: EtcdConfig, lease: int) -> dict[str, object]:
    async with Store(cfg, "lost") as store:
        kv = await store.get(store.schema.revoked(lease))
        assert kv is not None, "no revoked/ marker"
        value: dict[str, object] = json.loads(kv.value)
        return value
