"""The agent's wiring without root: the real daemon against a real etcd and a real HTTP
stand-in of the proxy's admin API, with the kernel edges (addresses, ARP) faked.

The namespace tests (tests/lab/agent) prove the kernel edge; these prove what the
daemon does with it: registration, holding and releasing, the clean stop's order,
liveness versus readiness, an unconfirmed removal, etcd down at start.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from agent.actions import Action
from agent.cli import agent_etcd, parse
from agent.daemon import Agent
from agent.proxy import ProxyClient
from haproxy_py.cluster.records import NodeRecord, VipAssignment
from haproxy_py.cluster.store import Store, StoreError
from haproxy_py.configfile import load
from tests.support.admin_stand_in import AdminStandIn
from tests.support.agent_fakes import FakeAddressTable, FakeAnnouncer
from tests.support.etcd import EtcdCluster
from tests.support.wait import eventually_async

VIP = "198.18.77.100"
FOREIGN = "198.18.77.1"  # the gateway, say: not on the node's allow-list


@dataclass
class Node:
    agent: Agent
    task: asyncio.Task[None]
    store: Store  # the test's own client, playing the controller
    admin: AdminStandIn
    table: FakeAddressTable
    announcer: FakeAnnouncer

    async def record(self) -> NodeRecord | None:
        kv = await self.store.get(self.store.schema.node("n1"))
        return None if kv is None else NodeRecord.parse("n1", kv.value, kv.lease)

    async def key(self) -> VipAssignment | None:
        kv = await self.store.get(self.store.schema.vip(VIP))
        return None if kv is None else VipAssignment.parse(VIP, kv.value, kv.lease, kv.mod_revision)

    async def assign(self, cause: str = "initial", vip: str = VIP) -> None:
        """As the controller does: the key names n1's lease but is bound to no lease."""
        record = await self.record()
        assert record is not None
        value = VipAssignment(
            vip=vip, node="n1", epoch=1, since=time.time(), cause=cause, lease=record.lease
        )
        assert await self.store.create(self.store.schema.vip(vip), value.to_json())

    async def release(self) -> int:
        """Ask n1 to let go; returns the releasing key's mod revision."""
        current = await self.key()
        assert current is not None
        releasing = VipAssignment(
            vip=VIP,
            node="n1",
            epoch=1,
            since=current.since,
            state="releasing",
            move_to="n2",
            lease=current.lease,
        )
        key = self.store.schema.vip(VIP)
        assert await self.store.replace(key, releasing.to_json(), current.mod_revision)
        after = await self.key()
        assert after is not None
        return after.mod_revision

    async def acknowledged(self) -> bool:
        """n1's record names the VIP key's current revision as let go."""
        key, record = await self.key(), await self.record()
        return (
            key is not None and record is not None and record.released.get(VIP) == key.mod_revision
        )

    async def new_owner_holds(self) -> None:
        """As the controller and n2 do: n2 gets the VIP (one transaction) and lists it held."""
        lease = await self.store.grant_lease(5)
        n2 = NodeRecord(name="n2", healthy=True, vips=(VIP,), lease=lease.id)
        await self.store.put(self.store.schema.node("n2"), n2.to_json(), lease=lease.id)
        current = await self.key()
        assert current is not None
        given = VipAssignment(VIP, "n2", epoch=2, since=time.time(), lease=lease.id)
        key = self.store.schema.vip(VIP)
        assert await self.store.replace(key, given.to_json(), current.mod_revision)


def config(path: Path, endpoints: list[str], url: str) -> Path:
    path.write_text(
        f"""
[node]
name = "n1"
address = "198.18.77.11"
interface = "eth0"
[cluster]
name = "w"
vips = ["198.18.77.100"]
[etcd]
endpoints = {endpoints!r}
[agent]
proxy_admin_url = "{url}"
health_interval = 0.05
reconcile_interval = 0.3
metrics_bind = ""
""".replace("'", '"')
    )
    return path


@contextlib.asynccontextmanager
async def running(path: Path, admin: AdminStandIn) -> AsyncIterator[Node]:
    settings, etcd_config = parse(load(path))
    etcd_config = agent_etcd(etcd_config, settings)
    table, announcer = FakeAddressTable(), FakeAnnouncer()
    store, test_store = Store(etcd_config, "w"), Store(etcd_config, "w")
    proxy = ProxyClient(settings.agent.proxy_admin_url, settings.agent.health_timeout)
    agent = Agent(settings, store, table, announcer, proxy)
    agent.handover.wait = 30.0  # a slow test host must not cut it
    node = Node(agent, asyncio.create_task(agent.run()), test_store, admin, table, announcer)
    try:
        yield node
    finally:
        # No controller runs here to give the VIPs on: take them back as one would, and wait
        # briefly for a next holder, or the clean stop waits out its limits (7 s) for a
        # hand-over nobody makes.
        agent.handover.cancel()
        agent.handover.wait = 0.1
        agent.stop()
        with contextlib.suppress(StoreError):
            kvs, _ = await test_store.get_prefix(test_store.schema.vips_prefix)
            for kv in kvs:
                await test_store.delete(kv.key)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(node.task, 10)
        node.task.cancel()
        await proxy.close()
        await store.close()
        await test_store.close()


@pytest.fixture
async def node(tmp_path: Path, etcd: EtcdCluster) -> AsyncIterator[Node]:
    admin = AdminStandIn()
    url = await admin.start()
    try:
        async with running(config(tmp_path / "n1.toml", etcd.endpoints, url), admin) as n:
            await eventually_async(lambda: _live(n), 15, "the node record to say live")
            yield n
    finally:
        await admin.stop()


async def _live(n: Node) -> bool:
    try:
        record = await n.record()
    except StoreError:  # the test's own client, while etcd comes back
        return False
    return record is not None and record.healthy


async def test_holds_an_assigned_vip_and_lists_it(node: Node) -> None:
    await node.assign()
    await eventually_async(lambda: VIP in node.table.present, 10, "the address set")
    assert VIP in node.announcer.announcing
    assert node.table.graced == [], "no grace period when nobody had the VIP before"

    async def listed() -> bool:
        record = await node.record()
        return record is not None and record.vips == (VIP,) and record.ready == 1

    await eventually_async(listed, 10, "the node record to list the VIP and its readiness")


async def test_after_a_loop_stall_the_fence_runs_before_any_queued_step(node: Node) -> None:
    await node.assign()
    await eventually_async(lambda: VIP in node.table.present, 10, "the address set")
    seen: list[bool] = []

    async def stall() -> list[Action]:
        # a frozen event loop (SIGSTOP, a VM pause): longer than the address's lifetime
        timing = node.agent.settings.agent.timing
        time.sleep(timing.address_lifetime + timing.kernel_slack + 0.3)  # noqa: ASYNC251
        return []

    async def look() -> list[Action]:
        seen.append(VIP in node.table.present)
        return []

    node.agent.actor.post(stall)
    node.agent.actor.post(look)  # queued during the stall, like a late watch event
    await eventually_async(lambda: bool(seen), 10, "the queued step to run")
    assert seen == [False], "the expired address was still there when the next step ran"


async def test_a_planned_take_over_gets_a_grace_period(node: Node) -> None:
    await node.assign(cause="manual")
    await eventually_async(lambda: VIP in node.table.present, 10, "the address set")
    assert node.table.graced == [VIP]


async def test_release_is_acknowledged_after_the_address_then_clients_told_after_the_new_owner(
    node: Node,
) -> None:
    await node.assign()
    await eventually_async(lambda: VIP in node.table.present, 10, "the address set")
    await node.release()
    await eventually_async(node.acknowledged, 10, "the release acknowledged in the node record")
    assert VIP not in node.table.present
    assert not node.admin.address_drains, "no 1001 before the new owner holds the VIP"
    await node.new_owner_holds()
    await eventually_async(lambda: bool(node.admin.address_drains), 10, "the clients told to go")
    assert node.admin.address_drains[0][0] == VIP and node.admin.drains == 0


async def test_an_unconfirmed_removal_is_never_acknowledged(node: Node) -> None:
    await node.assign()
    await eventually_async(lambda: VIP in node.table.present, 10, "the address set")
    node.table.removal_failing = True
    await node.release()
    await asyncio.sleep(0.6)  # several reconcile rounds: each retries the removal
    assert not await node.acknowledged(), "acknowledged while the kernel may carry the address"
    node.table.removal_failing = False
    await eventually_async(node.acknowledged, 10, "the acknowledgement once the removal took")


async def test_readiness_zero_keeps_the_vip_liveness_loss_drops_it(node: Node) -> None:
    await node.assign()
    await eventually_async(lambda: VIP in node.table.present, 10, "the address set")
    node.admin.ready = (0, 2)

    async def unready() -> bool:
        record = await node.record()
        return record is not None and record.ready == 0 and record.healthy

    await eventually_async(unready, 10, "readiness 0 published")
    assert VIP in node.table.present, "readiness is the controller's business"
    await node.admin.stop()  # connection refused: the proxy is gone
    started = time.monotonic()
    await eventually_async(lambda: VIP not in node.table.present, 10, "the address dropped")
    assert time.monotonic() - started < 1.0, "a refused connection needs no confirmation"
    await eventually_async(node.acknowledged, 10, "the VIP acknowledged as let go")


async def test_stop_releases_then_drains_per_vip_then_revokes(node: Node) -> None:
    await node.assign()
    await eventually_async(lambda: VIP in node.table.present, 10, "the address set")
    node.agent.stop()

    async def released() -> bool:
        record = await node.record()
        return record is not None and record.stopping and await node.acknowledged()

    await eventually_async(released, 10, "the VIP let go of with the record saying stopping")
    assert VIP not in node.table.present and not node.admin.address_drains
    await node.new_owner_holds()
    await asyncio.wait_for(node.task, 10)
    assert [vip for vip, _ in node.admin.address_drains] == [VIP]
    assert node.admin.drains == 0, "never a whole-proxy drain"
    assert await node.record() is None, "the lease revoked at the end"


async def test_etcd_down_at_start_is_waited_for(tmp_path: Path) -> None:
    admin = AdminStandIn()
    url = await admin.start()
    with EtcdCluster.start(1) as etcd:
        etcd.members[0].kill()
        path = config(tmp_path / "n1.toml", etcd.endpoints, url)
        try:
            async with running(path, admin) as n:
                await asyncio.sleep(1.5)
                assert not n.task.done(), "the agent must wait for etcd, not exit"
                etcd.members[0].restart()
                await eventually_async(lambda: _live(n), 30, "registered once etcd is back")
        finally:
            await admin.stop()


async def test_a_lost_lease_is_replaced_once(node: Node) -> None:
    before = await node.record()
    assert before is not None
    await node.store.revoke(before.lease)

    async def registered_again() -> NodeRecord | None:
        record = await node.record()
        return record if record is not None and record.lease != before.lease else None

    await eventually_async(registered_again, 10, "registered under a new lease")
    again = await registered_again()
    assert again is not None
    await asyncio.sleep(1.5)  # a registrar that did not stop would grant lease after lease
    record = await node.record()
    assert record is not None and record.lease == again.lease


async def test_a_vip_outside_the_allow_list_is_refused_and_reported(node: Node) -> None:
    """Whoever writes `vips/`, the node never takes an address its own config does not name."""
    await node.assign(vip=FOREIGN)

    async def refused() -> bool:
        record = await node.record()
        return record is not None and record.refused == (FOREIGN,)

    await eventually_async(refused, 10, "the refusal listed in the node record")
    assert FOREIGN not in node.table.present and FOREIGN not in node.announcer.announcing
    # the VIP it may hold still works
    await node.assign()
    await eventually_async(lambda: VIP in node.table.present, 10, "the allowed address set")
    assert FOREIGN not in node.table.present
