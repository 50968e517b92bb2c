"""The agent's wiring on the in-memory store: no etcd, no root.

The same daemon as in `tests/integration/cluster/test_agent.py` (there against a
real etcd), with the kernel edges faked and the store in memory: it registers,
holds what `vips/` assigns it, and its clean stop takes its record with it.
This is how a control-plane benchmark can run many agents in one process.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import cast

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


@dataclass
class OnMemory:
    """One agent on the memory store, its fake kernel and proxy, and the controller's view."""

    agent: Agent
    table: FakeAddressTable
    controller: MemoryStore
    store: MemoryStore  # the agent's

    async def live(self) -> NodeRecord | None:
        """n1's record, once it says the node is live."""
        kv = await self.controller.get(self.controller.schema.node("n1"))
        node = NodeRecord.parse("n1", kv.value, kv.lease) if kv else None
        return node if node is not None and node.healthy else None


@contextlib.asynccontextmanager
async def on_memory(
    tmp_path: Path, agent_lines: str = "", agent_store: type[MemoryStore] = MemoryStore
) -> AsyncIterator[OnMemory]:
    admin = AdminStandIn()
    url = await admin.start()
    path = tmp_path / "n1.toml"
    path.write_text(
        '[node]\nname = "n1"\naddress = "198.18.77.11"\n[cluster]\nname = "w"\n'
        f'[agent]\nproxy_admin_url = "{url}"\nhealth_interval = 0.05\nmetrics_bind = ""\n'
        f'allowed_vips = ["{VIP}"]\n{agent_lines}'
    )
    settings, _ = parse(load(path))
    data = MemoryData()
    store, controller = agent_store("w", data=data), MemoryStore("w", data=data)
    table = FakeAddressTable()
    proxy = ProxyClient(settings.agent.proxy_admin_url, settings.agent.health_timeout)
    agent = Agent(settings, store, table, FakeAnnouncer(), proxy)
    agent.handover.wait = 0.2  # no next owner comes in these tests
    try:
        yield OnMemory(agent, table, controller, store)
    finally:
        await proxy.close()
        await admin.stop()


async def test_registers_holds_and_leaves_on_the_memory_store(tmp_path: Path) -> None:
    async with on_memory(tmp_path) as m:
        task = asyncio.create_task(m.agent.run())
        try:
            registered = await eventually_async(m.live, 15, "n1 registered and live")
            assigned = VipAssignment(
                vip=VIP, node="n1", epoch=1, since=time.time(), cause="initial"
            )
            key = m.controller.schema.vip(VIP)
            assert await m.controller.create(key, assigned.to_json(), registered.lease)
            await eventually_async(lambda: VIP in m.table.present, 15, "the VIP on the interface")

            async def listed() -> bool:
                node = await m.live()
                return node is not None and node.vips == (VIP,)

            await eventually_async(listed, 15, "the record listing the VIP as held")
            m.agent.stop()
            await asyncio.wait_for(task, 15)
            assert await m.controller.get(m.controller.schema.node("n1")) is None
            assert VIP not in m.table.present
        finally:
            task.cancel()


async def test_a_planned_release_drops_the_address_only_after_the_clients_are_held(
    tmp_path: Path,
) -> None:
    """`releasing` reaches the agent by its watch and by its reconcile snapshots (every 0.05
    s here); whichever comes first, the address stays until the proxy held the VIP's
    clients (`Handover.hold`, slow here: 0.5 s), so nothing is in flight when it goes."""
    present_after_hold: list[bool] = []
    async with on_memory(tmp_path, "reconcile_interval = 0.05\n") as m:

        async def slow_hold(vip: str) -> None:
            await asyncio.sleep(0.5)
            present_after_hold.append(vip in m.table.present)

        m.agent.observers.before_release = slow_hold
        task = asyncio.create_task(m.agent.run())
        try:
            lease = (await eventually_async(m.live, 15, "n1 registered and live")).lease
            assigned = VipAssignment(vip=VIP, node="n1", epoch=1, since=time.time(), lease=lease)
            key = m.controller.schema.vip(VIP)
            assert await m.controller.create(key, assigned.to_json())
            await eventually_async(lambda: VIP in m.table.present, 15, "the VIP on the interface")
            releasing = dataclasses.replace(assigned, state="releasing", cause="manual")
            await m.controller.put(key, releasing.to_json())
            await eventually_async(lambda: VIP not in m.table.present, 15, "the VIP released")
            assert present_after_hold and all(present_after_hold), present_after_hold
        finally:
            m.agent.stop()
            task.cancel()


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
    async with on_memory(tmp_path, "lease_ttl = 1\nlapse = true\n", SlowKeepalives) as m:
        assert not m.agent.settings.failsafe  # a lapse outruns any failsafe round
        store, reader = cast(SlowKeepalives, m.store), m.controller
        store.revoked = []
        task = asyncio.create_task(m.agent.run())
        try:

            async def record() -> NodeRecord | None:
                kv = await reader.get(reader.schema.node("n1"))
                return NodeRecord.parse("n1", kv.value, kv.lease) if kv else None

            first = await eventually_async(record, 15, "n1 registered")
            assert first.lapse == 1 and (await reader.lease_time_to_live(first.lease))[1] == 2
            store.slow = True
            await eventually_async(
                lambda: first.lease in store.revoked, 10, "the lapsed lease revoked"
            )
            store.slow = False

            async def again() -> bool:
                node = await record()
                return node is not None and node.lease != first.lease and node.lapse == 1

            await eventually_async(again, 15, "n1 registered under a new lease")
            m.agent.stop()
            await asyncio.wait_for(task, 15)
        finally:
            task.cancel()
