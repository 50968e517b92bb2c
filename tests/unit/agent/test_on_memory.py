"""The agent's wiring on the in-memory store: no etcd, no root.

The same daemon as in `tests/integration/cluster/test_agent.py` (there against a
real etcd), with the kernel edges faked and the store in memory: it registers,
holds what `vips/` assigns it, and its clean stop takes its record with it.
This is how a control-plane benchmark can run many agents in one process.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from agent.cli import parse
from agent.daemon import Agent
from agent.proxy import ProxyClient
from haproxy_py.cluster.memstore import MemoryData, MemoryStore
from haproxy_py.cluster.records import NodeRecord, VipAssignment
from haproxy_py.configfile import load
from tests.support.admin_stand_in import AdminStandIn
from tests.support.agent_fakes import FakeAddressTable, FakeAnnouncer
from tests.support.wait import eventually_async

VIP = "198.18.77.100"


async def test_registers_holds_and_leaves_on_the_memory_store(tmp_path: Path) -> None:
    admin = AdminStandIn()
    url = await admin.start()
    path = tmp_path / "n1.toml"
    path.write_text(
        '[node]\nname = "n1"\naddress = "198.18.77.11"\n[cluster]\nname = "w"\n'
        f'[agent]\nproxy_admin_url = "{url}"\nhealth_interval = 0.05\nmetrics_bind = ""\n'
        f'allowed_vips = ["{VIP}"]\n'
    )
    settings, _ = parse(load(path))
    data = MemoryData()
    store, controller = MemoryStore("w", data=data), MemoryStore("w", data=data)
    table = FakeAddressTable()
    proxy = ProxyClient(settings.agent.proxy_admin_url, settings.agent.health_timeout)
    agent = Agent(settings, store, table, FakeAnnouncer(), proxy)
    agent.handover.wait = 0.2  # no next owner comes in this test
    task = asyncio.create_task(agent.run())
    try:

        async def record() -> NodeRecord | None:
            kv = await controller.get(controller.schema.node("n1"))
            node = NodeRecord.parse("n1", kv.value, kv.lease) if kv else None
            return node if node is not None and node.healthy else None

        registered = await eventually_async(record, 15, "n1 registered and live")
        assigned = VipAssignment(vip=VIP, node="n1", epoch=1, since=time.time(), cause="initial")
        key = controller.schema.vip(VIP)
        assert await controller.create(key, assigned.to_json(), registered.lease)
        await eventually_async(lambda: VIP in table.present, 15, "the VIP on the interface")

        async def listed() -> bool:
            node = await record()
            return node is not None and node.vips == (VIP,)

        await eventually_async(listed, 15, "the record listing the VIP as held")
        agent.stop()
        await asyncio.wait_for(task, 15)
        assert await controller.get(controller.schema.node("n1")) is None
        assert VIP not in table.present
    finally:
        task.cancel()
        await proxy.close()
        await admin.stop()


class SlowKeepalives(MemoryStore):
    """While `slow`, every keepalive answers after 0.3 s (longer than the agent waits);
    remembers the leases revoked through it."""

    slow = False
    revoked: list[int]

    async def keepalive(self, lease_id: int) -> int:
        if self.slow:
            await asyncio.sleep(0.3)
        return await super().keepalive(lease_id)

    async def revoke(self, lease_id: int) -> None:
        self.revoked.append(lease_id)
        await super().revoke(lease_id)


async def test_a_lapsed_lease_is_revoked_before_the_agent_registers_again(tmp_path: Path) -> None:
    """`lapse = true`: no keepalive answered in time for lease_ttl (1 s), so the agent gives
    the lease up, revokes it (etcd still answers other calls) long before its granted 2 s
    could run out, and registers under a new lease that its record declares."""
    admin = AdminStandIn()
    url = await admin.start()
    path = tmp_path / "n1.toml"
    path.write_text(
        '[node]\nname = "n1"\naddress = "198.18.77.11"\n[cluster]\nname = "w"\n'
        f'[agent]\nproxy_admin_url = "{url}"\nhealth_interval = 0.05\nmetrics_bind = ""\n'
        f'allowed_vips = ["{VIP}"]\nlease_ttl = 1\nlapse = true\n'
    )
    settings, _ = parse(load(path))
    assert not settings.failsafe  # a lapse outruns any failsafe round
    data = MemoryData()
    store, reader = SlowKeepalives("w", data=data), MemoryStore("w", data=data)
    store.revoked = []
    proxy = ProxyClient(settings.agent.proxy_admin_url, settings.agent.health_timeout)
    agent = Agent(settings, store, FakeAddressTable(), FakeAnnouncer(), proxy)
    task = asyncio.create_task(agent.run())
    try:

        async def record() -> NodeRecord | None:
            kv = await reader.get(reader.schema.node("n1"))
            return NodeRecord.parse("n1", kv.value, kv.lease) if kv else None

        first = await eventually_async(record, 15, "n1 registered")
        assert first.lapse == 1 and (await reader.lease_time_to_live(first.lease))[1] == 2
        store.slow = True
        await eventually_async(lambda: first.lease in store.revoked, 10, "the lapsed lease revoked")
        store.slow = False

        async def again() -> bool:
            node = await record()
            return node is not None and node.lease != first.lease and node.lapse == 1

        await eventually_async(again, 15, "n1 registered under a new lease")
        agent.stop()
        await asyncio.wait_for(task, 15)
    finally:
        task.cancel()
        await proxy.close()
        await admin.stop()
