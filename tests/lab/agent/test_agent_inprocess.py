"""The agent daemon against real etcd, real netlink and real ARP, in one process.

The agent's netlink and packet sockets are opened inside a namespace this test
creates (so VIPs land there, never on the host); etcd and the stand-in proxy
admin API run on loopback. The test itself plays the controller's part of the
hand-over protocol by writing `vips/<vip>` keys naming the node's lease, as the controller
does, and reading the node's acknowledgements in its record.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from pyroute2.netns import popns, pushns

from agent.cli import agent_etcd, parse
from agent.daemon import Agent
from agent.garp import ETH_P_ARP, Announcer, parse_arp
from agent.netlink import Addresses
from agent.proxy import ProxyClient
from haproxy_py.cluster.records import ClusterPolicy, NodeRecord, VipAssignment
from haproxy_py.cluster.store import Store
from haproxy_py.configfile import load
from tests.lab.agent.support import addresses, plumbing
from tests.support.admin_stand_in import AdminStandIn
from tests.support.etcd import EtcdCluster
from tests.support.wait import eventually_async

pytestmark = pytest.mark.lab


@dataclass
class Harness:
    agent: Agent
    task: asyncio.Task[None]
    store: Store  # the test's own client, playing the controller
    admin: AdminStandIn
    netns: str
    mac: bytes
    capture: socket.socket
    vip: str
    other_vip: str
    address: str

    async def node(self) -> NodeRecord | None:
        kv = await self.store.get(self.store.schema.node("n1"))
        if kv is None:
            return None
        return NodeRecord.parse("n1", kv.value, kv.lease, kv.mod_revision)

    async def assign(self, vip: str, node: str = "n1", lease: int | None = None) -> None:
        if lease is None:
            record = await self.node()
            assert record is not None
            lease = record.lease
        value = VipAssignment(vip=vip, node=node, epoch=1, since=time.time(), lease=lease)
        await self.store.put(self.store.schema.vip(vip), value.to_json())

    async def acknowledged(self, vip: str) -> bool:
        """n1's record names the VIP key's current revision as let go."""
        key, record = await self.vip_key(vip), await self.node()
        return (
            key is not None and record is not None and record.released.get(vip) == key.mod_revision
        )

    async def vip_key(self, vip: str) -> VipAssignment | None:
        kv = await self.store.get(self.store.schema.vip(vip))
        if kv is None:
            return None
        return VipAssignment.parse(vip, kv.value, kv.lease, kv.mod_revision)

    def has(self, vip: str) -> bool:
        return vip in addresses(self.netns)

    def arp_frames(self) -> list[tuple[int, bytes, str, str]]:
        frames: list[tuple[int, bytes, str, str]] = []
        while True:
            try:
                frame = self.capture.recv(2048)
            except BlockingIOError:
                return frames
            parsed = parse_arp(frame)
            if parsed is not None:
                frames.append(parsed)


@contextlib.contextmanager
def in_netns(netns: str) -> Iterator[None]:
    """Sockets opened inside stay in `netns` (setns applies to this thread only)."""
    pushns(netns)
    try:
        yield
    finally:
        popns()


@pytest.fixture
async def harness(tmp_path: Path, etcd: EtcdCluster) -> AsyncIterator[Harness]:
    with plumbing(tmp_path, "hvi") as (lab, net):
        lab.bridge()
        node = lab.add_host("n1", f"{net}.11/24")
        peer = lab.add_host("cap", f"{net}.99/24")
        admin = AdminStandIn()
        url = await admin.start()
        config = tmp_path / "node.toml"
        config.write_text(
            f"""
[node]
name = "n1"
address = "{net}.11"
interface = "eth0"
priority = 150
[cluster]
name = "t"
vips = ["{net}.100", "{net}.101"]
[etcd]
endpoints = {list(etcd.endpoints)!r}
[agent]
proxy_admin_url = "{url}"
health_interval = 0.05
health_rise = 2
health_fall = 2
reconcile_interval = 0.3
garp_second_burst = 0.5
metrics_bind = "127.0.0.1:0"
""".replace("'", '"')
        )
        settings, etcd_config = parse(load(config))
        etcd_config = agent_etcd(etcd_config, settings)
        with in_netns(peer.netns):
            capture = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ARP))
            capture.bind(("eth0", ETH_P_ARP))
            capture.setblocking(False)
        with in_netns(node.netns):
            nl = await Addresses.open("eth0")
            announcer = Announcer("eth0", nl.mac, settings.agent.garp, nl.until)
        store = Store(etcd_config, "t")
        test_store = Store(etcd_config, "t")
        proxy = ProxyClient(url, settings.agent.health_timeout)
        agent = Agent(settings, store, nl, announcer, proxy)
        task = asyncio.create_task(agent.run())
        h = Harness(
            agent,
            task,
            test_store,
            admin,
            node.netns,
            nl.mac,
            capture,
            vip=f"{net}.100",
            other_vip=f"{net}.101",
            address=f"{net}.11",
        )
        try:
            await eventually_async(
                lambda: _healthy(h), 15, "the node record to say healthy", every=0.05
            )
            yield h
        finally:
            agent.stop()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(task, 10)
            task.cancel()
            announcer.close()
            nl.close()
            capture.close()
            await proxy.close()
            await store.close()
            await test_store.close()
            await admin.stop()


async def run(*argv: str) -> None:
    proc = await asyncio.create_subprocess_exec(*argv)
    assert await proc.wait() == 0, f"{argv} failed"


def _not_healthy(h: Harness) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        record = await h.node()
        return record is not None and not record.healthy

    return check


async def _healthy(h: Harness) -> bool:
    record = await h.node()
    return record is not None and record.healthy


async def test_registers_holds_and_announces_an_assigned_vip(harness: Harness) -> None:
    h = harness
    record = await h.node()
    assert record is not None
    assert (record.address, record.interface, record.priority) == (h.address, "eth0", 150)
    assert record.lease != 0 and record.vips == ()
    await eventually_async(
        lambda: _figures(h), 10, "backend and readiness figures in the node record", every=0.05
    )

    await h.assign(h.vip)
    assigned = time.monotonic()
    await eventually_async(lambda: h.has(h.vip), 10, "the VIP on the node's interface")
    print(f"assigned -> address present: {(time.monotonic() - assigned) * 1000:.1f} ms")
    lifetime = addresses(h.netns)[h.vip]
    assert lifetime is not None and lifetime <= 1, "a VIP must carry a short kernel lifetime"

    seen: list[tuple[int, bytes, str, str]] = []

    def announced() -> bool:
        seen.extend(f for f in h.arp_frames() if f[2] == h.vip)
        return {f[0] for f in seen} == {1, 2} and len(seen) >= 4

    await eventually_async(announced, 10, "gratuitous ARP requests and replies for the VIP")
    for _op, mac, sender, target in seen:
        assert (mac, sender, target) == (h.mac, h.vip, h.vip)

    async def listed() -> bool:
        record = await h.node()
        return record is not None and record.vips == (h.vip,)

    await eventually_async(listed, 10, "the node record to list the VIP")
    # the lifetime keeps being re-armed while keepalives succeed
    await asyncio.sleep(2.5)  # longer than the lifetime: only re-arming keeps it
    assert h.has(h.vip)

    async with aiohttp.ClientSession() as session:
        url = f"http://127.0.0.1:{h.agent.metrics.port}/metrics"
        async with session.get(url) as response:
            text = await response.text()
    assert "haproxy_py_agent_vips_held 1" in text
    assert "haproxy_py_agent_etcd_reachable 1" in text
    garps = [ln for ln in text.splitlines() if ln.startswith("haproxy_py_agent_garps_sent_total")]
    assert garps and float(garps[0].split()[-1]) >= 4


async def _figures(h: Harness) -> bool:
    record = await h.node()
    return record is not None and (record.ready, record.pools, record.backends_up) == (1, 2, 1)


async def test_planned_release_removes_the_address_before_acknowledging(
    harness: Harness,
) -> None:
    h = harness
    h.agent.handover.wait = 30.0  # a slow test host must not cut it
    await h.assign(h.vip)
    await eventually_async(lambda: h.has(h.vip), 10, "the VIP on the node")
    current = await h.vip_key(h.vip)
    assert current is not None
    releasing = VipAssignment(
        vip=h.vip,
        node="n1",
        epoch=1,
        since=current.since,
        state="releasing",
        move_to="n2",
        lease=current.lease,
    )
    key = h.store.schema.vip(h.vip)
    assert await h.store.replace(key, releasing.to_json(), current.mod_revision)
    started = time.monotonic()

    async def acknowledged() -> bool:
        return await h.acknowledged(h.vip)

    async def at_drain(address: str) -> tuple[bool, VipAssignment | None, NodeRecord | None]:
        kv = await h.store.get(h.store.schema.node("n2"))
        n2 = None if kv is None else NodeRecord.parse("n2", kv.value, kv.lease)
        return h.has(address), await h.vip_key(address), n2

    h.admin.on_address_drain = at_drain
    await eventually_async(acknowledged, 10, "the owner to acknowledge the release")
    took = time.monotonic() - started
    assert not h.has(h.vip), "acknowledged while the address was still up"
    print(f"release -> acknowledged: {took * 1000:.1f} ms")

    lease = await h.store.grant_lease(5)  # the controller gives the VIP to n2
    await h.assign(h.vip, node="n2", lease=lease.id)
    await asyncio.sleep(0.2)  # a window in which a drain that does not wait for n2 would show
    n2 = NodeRecord(
        name="n2",
        address="198.18.0.12",
        interface="eth0",
        priority=100,
        version="test",
        healthy=True,
        healthy_since=time.time(),
        backends_up=1,
        backends_total=1,
        vips=(h.vip,),
        updated=time.time(),
        lease=lease.id,
    )
    await h.store.put(h.store.schema.node("n2"), n2.to_json(), lease=lease.id)
    await eventually_async(
        lambda: bool(h.admin.address_drains), 10, "the proxy asked to drain the VIP's clients"
    )
    ((address, (present, owner, holder)),) = h.admin.address_drains
    assert address == h.vip
    assert not present, "the 1001 must leave after the address"
    assert owner is not None and owner.node == "n2"
    assert holder is not None and h.vip in holder.vips, "the 1001 waits until n2 holds the VIP"


async def test_unhealthy_proxy_drops_the_vip_and_its_key(harness: Harness) -> None:
    h = harness
    await h.assign(h.vip)
    await eventually_async(lambda: h.has(h.vip), 10, "the VIP on the node")
    h.admin.healthy = False
    started = time.monotonic()
    await eventually_async(lambda: not h.has(h.vip), 10, "the VIP to go when the proxy fails")
    print(f"proxy unhealthy -> address removed: {(time.monotonic() - started) * 1000:.1f} ms")

    async def dropped() -> bool:
        record = await h.node()
        return await h.acknowledged(h.vip) and record is not None and not record.healthy

    await eventually_async(dropped, 10, "the VIP let go of and the node record saying unhealthy")
    # nobody takes the VIP over here: its clients are told to go after a bounded wait
    await eventually_async(
        lambda: bool(h.admin.address_drains), 10, "the proxy asked to drain the VIP's clients"
    )
    assert [address for address, _ in h.admin.address_drains] == [h.vip]
    # an unhealthy node refuses a VIP given to it anyway
    await h.assign(h.vip)
    await eventually_async(dropped, 10, "the refused assignment to be let go of")
    assert not h.has(h.vip)
    h.admin.healthy = True
    await eventually_async(lambda: _healthy(h), 10, "health to come back")


async def test_reconcile_fixes_what_the_kernel_lost_or_gained(harness: Harness) -> None:
    h = harness
    await h.assign(h.vip)
    await eventually_async(lambda: h.has(h.vip), 10, "the VIP on the node")
    # another node owns other_vip; a stale copy of it sits on this node's interface
    lease = await h.store.grant_lease(30)
    await h.assign(h.other_vip, node="n2", lease=lease.id)
    ip = ["ip", "-n", h.netns, "addr"]
    await run(*ip, "del", f"{h.vip}/32", "dev", "eth0")
    await run(
        *ip, "add", f"{h.other_vip}/32", "dev", "eth0", "valid_lft", "60", "preferred_lft", "60"
    )
    await eventually_async(
        lambda: h.has(h.vip) and not h.has(h.other_vip),
        10,
        "the agent to restore its VIP and remove the one it does not own",
    )
    await h.store.revoke(lease.id)


async def test_frozen_etcd_makes_the_agent_fence_itself_before_the_lease_ends(
    harness: Harness, etcd: EtcdCluster
) -> None:
    h = harness
    await h.assign(h.vip)
    await eventually_async(lambda: h.has(h.vip), 10, "the VIP on the node")
    before = await h.node()
    assert before is not None
    etcd.members[0].freeze()
    frozen = time.monotonic()
    try:
        await eventually_async(lambda: not h.has(h.vip), 10, "the agent to drop the VIP")
        fenced = time.monotonic() - frozen
        print(f"etcd frozen -> VIP removed: {fenced * 1000:.1f} ms")
        # the last keepalive was sent before the freeze, so its lease ends at most TTL after it
        assert fenced < 2.0, "the VIP outlived the lease"
        await asyncio.sleep(2.5)  # stay frozen past the lease TTL
        assert not h.has(h.vip)
    finally:
        etcd.members[0].thaw()

    # etcd expires the old lease on waking; the agent registers again under a new one
    async def registered_again() -> bool:
        record = await h.node()
        return record is not None and record.lease not in (0, before.lease) and record.healthy

    await eventually_async(registered_again, 20, "the agent to re-register under a new lease")
    stale = await h.vip_key(h.vip)
    assert stale is not None and stale.lease == before.lease and not h.has(h.vip)
    await h.assign(h.vip)  # the controller gives it again, under the new lease
    await eventually_async(lambda: h.has(h.vip), 10, "the VIP back under the new lease")


async def test_stop_hands_over_then_drains_per_vip_never_the_whole_proxy(
    harness: Harness,
) -> None:
    h = harness
    h.agent.handover.wait = 30.0  # a slow test host must not cut it
    await h.assign(h.vip)
    await eventually_async(lambda: h.has(h.vip), 10, "the VIP on the node")

    async def at_drain(address: str) -> tuple[bool, NodeRecord | None, VipAssignment | None]:
        return h.has(address), await h.node(), await h.vip_key(address)

    h.admin.on_address_drain = at_drain
    started = time.monotonic()
    h.agent.stop()

    async def released() -> bool:
        record = await h.node()
        return record is not None and record.stopping and await h.acknowledged(h.vip)

    await eventually_async(released, 10, "the VIP let go of, the node record saying stopping")
    print(f"stop -> VIP released: {(time.monotonic() - started) * 1000:.1f} ms")
    assert not h.has(h.vip)
    assert not h.admin.address_drains, "the 1001 waits for the next owner"
    # the next owner takes the VIP and says so: only now are the clients told to go
    lease = await h.store.grant_lease(5)
    n2 = NodeRecord(name="n2", healthy=True, vips=(h.vip,), lease=lease.id)
    # in that order, as in a cluster: the controller assigns, then n2's agent lists it
    await h.assign(h.vip, node="n2", lease=lease.id)
    await h.store.put(h.store.schema.node("n2"), n2.to_json(), lease=lease.id)
    await asyncio.wait_for(h.task, 10)
    ((address, (present, record, key)),) = h.admin.address_drains
    assert address == h.vip and not present and key is not None and key.node == "n2"
    assert record is not None and record.stopping, "the lease is revoked after the drain"
    assert await h.node() is None, "the node key goes with the revoked lease"
    assert h.admin.drains == 0, "the agent's stop never drains the whole proxy"


@pytest.mark.parametrize("how", ["deleted", "given on"])
async def test_vip_taken_away_has_its_clients_told_once_the_next_owner_holds_it(
    harness: Harness, how: str
) -> None:
    """The controller takes the VIP from a node that keeps its lease and made no release
    (its key deleted, as with a lease revoked for failed owner probes; or given on): the
    proxy still carries the VIP's connections and nothing but this removal tells them to go.
    The next owner's grace period drops their packets, so untold they hang."""
    h = harness
    h.agent.handover.wait = 30.0  # a slow test host must not cut it
    await h.assign(h.vip)
    await eventually_async(lambda: h.has(h.vip), 10, "the VIP on the node")
    lease = await h.store.grant_lease(5)
    if how == "deleted":
        assert await h.store.delete(h.store.schema.vip(h.vip))
    else:
        await h.assign(h.vip, node="n2", lease=lease.id)
    await eventually_async(lambda: not h.has(h.vip), 10, "the VIP gone from the node")
    await asyncio.sleep(0.2)  # a window in which a drain that does not wait for n2 would show
    assert not h.admin.address_drains, "the 1001 waits for the next owner"
    n2 = NodeRecord(name="n2", healthy=True, vips=(h.vip,), lease=lease.id)
    await h.store.put(h.store.schema.node("n2"), n2.to_json(), lease=lease.id)
    await eventually_async(
        lambda: bool(h.admin.address_drains), 10, "the proxy asked to drain the VIP's clients"
    )
    assert [address for address, _ in h.admin.address_drains] == [h.vip]
    record = await h.node()
    assert record is not None and record.healthy, "the node stays in service"


async def test_start_undrains_a_drain_no_operator_recorded(harness: Harness) -> None:
    h = harness
    h.admin.draining = True  # as a stop of an older agent leaves it
    h.agent.observers._drain_checked = False  # as at the agent's start
    await eventually_async(lambda: h.admin.undrains == 1, 10, "the proxy undrained")
    assert not h.admin.draining


async def test_start_keeps_a_drain_an_operator_recorded(harness: Harness) -> None:
    h = harness
    await h.store.put(h.store.schema.config, ClusterPolicy(drained=("n1",)).to_json())
    h.admin.draining = True
    h.agent.observers._drain_checked = False
    await eventually_async(_not_healthy(h), 10, "the draining proxy seen as not live")
    await asyncio.sleep(0.5)  # probes keep coming; none may undrain
    assert h.admin.undrains == 0 and h.admin.draining


async def test_etcd_restart_fences_then_resumes_under_the_same_lease(
    harness: Harness, etcd: EtcdCluster
) -> None:
    """etcd keeps leases across a restart (with a fresh TTL): the agent drops the VIP while
    etcd is down, and takes it back under the same lease once keepalives succeed again."""
    h = harness
    await h.assign(h.vip)
    await eventually_async(lambda: h.has(h.vip), 10, "the VIP on the node")
    before = await h.node()
    assert before is not None
    etcd.members[0].kill()
    down = time.monotonic()
    try:
        await eventually_async(lambda: not h.has(h.vip), 10, "the agent to drop the VIP")
        print(f"etcd killed -> VIP removed: {(time.monotonic() - down) * 1000:.1f} ms")
    finally:
        etcd.members[0].restart()
    await eventually_async(lambda: h.has(h.vip), 30, "the VIP back after the restart")
    after = await h.node()
    assert after is not None and after.lease == before.lease
