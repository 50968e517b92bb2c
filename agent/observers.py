"""The agent's observers: each loop watches one thing and posts steps for the actor.

A step is a closure the actor runs against the core (`agent.state`); its
actions go to `agent.effects`. Observers never touch the core themselves, so
the core sees one event at a time, in order.

Liveness probing does not flap and still meets the 500 ms budget for a dead or
hung proxy: a probe starts every `health_interval` whether or not the previous
one answered; a refused connection counts at once (the process is gone), a
timeout only after `health_fall` consecutive misses; a proxy that says it
drains counts at once too; a late answer older than one already counted is
ignored.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import structlog

from agent.actions import Action
from agent.effects import EtcdState
from agent.metrics import AgentMetrics
from agent.netlink import NetlinkFailure
from agent.proxy import ProxyClient, ProxyStatus
from agent.registration import Registration
from agent.state import RELEASING, AgentCore, Assignment
from haproxy_py.cluster.agent_config import AgentConfig
from haproxy_py.cluster.records import ClusterPolicy, KeyValue, VipAssignment
from haproxy_py.cluster.store import LeaseLost, StoreError
from haproxy_py.cluster.storeapi import KVStore
from haproxy_py.cluster.tasks import supervised
from haproxy_py.cluster.timing import granted_ttl

log = structlog.get_logger(__name__)

Step = Callable[[], Awaitable[list[Action]]]
T = TypeVar("T")
TICK = 0.05  # fencing resolution: well below the fence margin


def assignment_of(kv: KeyValue, prefix: str) -> tuple[str, Assignment | None]:
    """The VIP a `vips/` key names and what it says (None when unreadable)."""
    vip = kv.key[len(prefix) :]
    record = VipAssignment.parse(vip, kv.value, kv.lease, kv.mod_revision)
    if record is None:
        return vip, None
    return vip, Assignment(
        record.node, record.state, record.lease, record.mod_revision, record.cause
    )


async def _nothing(vip: str) -> None:
    pass


class Observers:
    """The agent's loops and the steps they post."""

    def __init__(
        self,
        config: AgentConfig,
        core: AgentCore,
        store: KVStore,
        proxy: ProxyClient,
        registration: Registration,
        metrics: AgentMetrics,
        etcd: EtcdState,
        post: Callable[[Step], None],
        kernel: Callable[[], Awaitable[set[str]]],
        reopen: Callable[[], Awaitable[None]],
    ) -> None:
        self.config = config
        self.core = core
        self.store = store
        self.proxy = proxy
        self.registration = registration
        self.metrics = metrics
        self.etcd = etcd
        self.post = post
        self.kernel = kernel
        self.reopen = reopen
        self.keepalive_now = asyncio.Event()
        self.vips_prefix = store.schema.vips_prefix
        self._probe_seq = 0
        self._applied_seq = 0
        self._drain_checked = False
        self.registrar: asyncio.Task[None] | None = None  # a regrant after a lost lease
        self._proxy_was_down = False  # a probe found it not live (not just: not yet probed)
        self.proxy_back: Callable[[], None] = lambda: None  # live again after it was down
        # a planned release, before the core drops the address (`Handover.hold`)
        self.before_release: Callable[[str], Awaitable[None]] = _nothing
        # per VIP: the releasing write (mod revision) whose hold was started, and that hold
        self._holds: dict[str, tuple[int, asyncio.Future[None]]] = {}

    def start(self, revision: int) -> list[asyncio.Task[None]]:
        """Every loop as a supervised task (restarted after a failure); the watch from
        `revision` on."""
        loops: list[tuple[str, Callable[[], Awaitable[None]]]] = [
            ("keepalive", self.keepalive_loop),
            ("health", self.health_loop),
            ("watch", lambda: self.watch_loop(revision)),
            ("reconcile", self.reconcile_loop),
            ("tick", self.tick_loop),
        ]
        return [asyncio.create_task(supervised(name, run), name=name) for name, run in loops]

    # --- lease ----------------------------------------------------------------------------

    async def grant(self) -> Step:
        """A new lease (StoreError when etcd does not answer)."""
        sent = time.monotonic()
        lease = await self.store.grant_lease(granted_ttl(self.config.timing))
        self.etcd(True)
        log.info("lease granted", lease=f"{lease.id:x}", ttl=lease.ttl)

        async def step() -> list[Action]:
            return self.core.lease_granted(lease.id, sent, lease.ttl, time.monotonic())

        return step

    async def grant_until_granted(self) -> Step:
        """Keep asking for a lease, backing off to 2 s, until etcd grants one."""
        return await self.until_answered("lease grant", self.grant)

    async def until_answered(self, what: str, call: Callable[[], Awaitable[T]]) -> T:
        """`call()` again and again, backing off to 2 s, while etcd does not answer."""
        backoff = 0.1
        while True:
            try:
                return await call()
            except StoreError as exc:
                self.etcd(False, f"{what}: {exc}")
                await asyncio.sleep(backoff)
                backoff = min(2 * backoff, 2.0)

    async def first_registration(self) -> int:
        """Lease and first snapshot, retrying in-process while etcd is unreachable; the
        revision read at."""
        self.post(await self.grant_until_granted())
        kvs, revision = await self.until_answered("read", self.read_vips)
        self.post(self.snapshot_step(kvs, revision))
        self.post(self.kernel_step)
        return revision

    async def regrant(self, revoke: int = 0) -> None:
        """The lease was lost: register again under a new one, then re-read `vips/`; a lapsed
        lease `revoke` is revoked first if etcd answers (else the controllers prove it)."""
        if revoke:
            with contextlib.suppress(StoreError):
                await self.store.revoke(revoke)
        self.post(await self.grant_until_granted())
        await self.post_snapshot()

    def regrant_soon(self, revoke: int = 0) -> None:
        """`regrant` as a task of its own, unless one is running already."""
        if self.registrar is None or self.registrar.done():
            self.registrar = asyncio.create_task(
                supervised("regrant", lambda: self.regrant(revoke), once=True), name="regrant"
            )

    def lease_lost_step(self, lease: int) -> Step:
        async def step() -> list[Action]:
            if self.core.lease_id != lease:
                return []
            log.warning("lease lost", lease=f"{lease:x}")
            return self.core.lease_lost(time.monotonic())

        return step

    async def keepalive_loop(self) -> None:
        timing = self.config.timing
        # After a failure, try again soon: an etcd leader election or a dead endpoint costs
        # one retry period instead of a whole interval of the little time the address has left.
        retry = timing.keepalive_interval / 5
        wait = timing.keepalive_interval
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self.keepalive_now.wait()
            wait = retry
            self.keepalive_now.clear()
            lease = self.core.lease_id
            if lease is None:
                continue  # (while stopping too: the lease lives until the VIPs are handed over)
            sent = time.monotonic()
            try:
                async with asyncio.timeout(timing.keepalive_timeout):
                    ttl = await self.store.keepalive(lease)
            except LeaseLost:
                self.etcd(True)
                self.post(self.lease_lost_step(lease))
                continue
            except (StoreError, TimeoutError) as exc:
                self.metrics.keepalive_failures.inc()
                self.etcd(False, f"keepalive: {str(exc) or 'no answer in time'}")
                self.post(self._keepalive_failed_step())
                continue
            # the next leaves an interval after this one left, not after its answer: a new VIP
            # can be armed at once only within the re-arm window of the last send
            wait = max(0.0, sent + timing.keepalive_interval - time.monotonic())
            self.etcd(True)
            self.metrics.keepalive_latency.set(time.monotonic() - sent)
            self.post(self._keepalive_ok_step(lease, sent, ttl))

    def _keepalive_ok_step(self, lease: int, sent: float, ttl: int) -> Step:
        async def step() -> list[Action]:
            if self.core.lease_id != lease:
                return []
            was_fenced = self.core.fenced
            actions = self.core.keepalive_ok(sent, ttl, time.monotonic())
            if was_fenced and not self.core.fenced:
                log.info("keepalive succeeded again; fence lifted")
            return actions

        return step

    def _keepalive_failed_step(self) -> Step:
        async def step() -> list[Action]:
            return self.core.keepalive_failed(time.monotonic())

        return step

    # --- the proxy ------------------------------------------------------------------------

    async def health_loop(self) -> None:
        interval = self.config.health_interval
        in_flight: set[asyncio.Task[None]] = set()
        limit = self.config.health_fall + 1  # enough overlap to count every miss in time
        try:
            while True:
                started = time.monotonic()
                if len(in_flight) < limit:
                    self._probe_seq += 1
                    task = asyncio.create_task(self._probe(self._probe_seq), name="probe")
                    in_flight.add(task)
                    task.add_done_callback(in_flight.discard)
                await asyncio.sleep(max(0.0, interval - (time.monotonic() - started)))
        finally:
            for task in in_flight:
                task.cancel()

    async def _probe(self, seq: int) -> None:
        status = await self.proxy.probe()
        self.post(self._health_step(seq, status))
        if status.draining is not None and not self._drain_checked:
            self._drain_checked = True
            if status.draining:
                await self._undrain_leftover()

    def _health_step(self, seq: int, status: ProxyStatus) -> Step:
        async def step() -> list[Action]:
            if seq < self._applied_seq:
                return []  # a late answer: a newer probe has been counted already
            self._applied_seq = seq
            was = self.core.health.healthy
            now = time.monotonic()
            # refused (the process is gone) or draining (it says so): no need to confirm
            fast = status.refused or bool(status.draining)
            actions = self.core.health_sample(status.live, now, fast=fast)
            healthy = self.core.health.healthy
            self.metrics.proxy_healthy.set(1 if healthy else 0)
            if healthy != was:
                self.registration.health_changed(healthy)
                if healthy and self._proxy_was_down:
                    self.proxy_back()
                self._proxy_was_down = not healthy
                (log.info if healthy else log.warning)(
                    "proxy live" if healthy else "proxy not live", detail=status.detail
                )
            if status.live:
                actions += self.core.readiness_sample(status.ready, status.pools)
                if self.registration.servers_seen(status.servers_up, status.servers):
                    self.registration.publish()
            return actions

        return step

    async def _undrain_leftover(self) -> None:
        """At start: a whole-proxy drain that no operator recorded in etcd is a leftover
        (an older agent's stop, a hand-made `POST /drain`): bring the proxy back."""
        try:
            kv = await self.store.get(self.store.schema.config)
        except StoreError as exc:
            log.warning("proxy is draining; cannot read whether an operator asked", error=str(exc))
            self._drain_checked = False  # look again at the next probe
            return
        settings = None if kv is None else ClusterPolicy.parse(kv.value, kv.mod_revision)
        if settings is not None and self.core.name in settings.drained:
            log.info("proxy is draining, as an operator asked (hactl drain); left so")
            return
        outcome = await self.proxy.undrain()
        log.warning(
            "proxy was draining with no operator's drain recorded; undrained", proxy=outcome
        )

    # --- vips/ and the kernel ----------------------------------------------------------------

    async def watch_loop(self, start_revision: int) -> None:
        revision = start_revision
        while True:
            async for event in self.store.watch(self.vips_prefix, revision):
                if event.kind == "resync":
                    await self.post_snapshot()
                    continue
                revision = event.mod_revision + 1
                kv = KeyValue(event.key, event.value, 0, event.mod_revision, event.lease)
                vip, assignment = assignment_of(kv, self.vips_prefix)
                if event.kind == "delete":
                    assignment = None
                await self._hold_released([(vip, assignment)])
                self.post(self._event_step(vip, assignment, event.mod_revision))

    async def _hold_released(self, seen: list[tuple[str, Assignment | None]]) -> None:
        """Before the core hears of a planned release of a VIP held here (the controller asks
        this node to let it go), its clients are held (`Handover.hold`): whichever of the
        watch and the snapshots brings the news first waits for it."""
        waits = []
        for vip, a in seen:
            if a is None or a.state != RELEASING or a.owner != self.core.name:
                continue
            started = self._holds.get(vip)
            if started is not None and started[0] == a.revision:
                waits.append(started[1])  # the other path's hold of this release: wait for it
            elif vip in self.core.held:
                hold = asyncio.ensure_future(self.before_release(vip))
                self._holds[vip] = (a.revision, hold)
                waits.append(hold)
        if waits:
            await asyncio.gather(*(asyncio.shield(w) for w in waits))

    def _event_step(self, vip: str, assignment: Assignment | None, revision: int) -> Step:
        async def step() -> list[Action]:
            return self.core.assignment_event(vip, assignment, revision, time.monotonic())

        return step

    async def read_vips(self) -> tuple[list[KeyValue], int]:
        return await self.store.get_prefix(self.vips_prefix)

    async def post_snapshot(self) -> None:
        try:
            kvs, revision = await self.read_vips()
        except StoreError as exc:
            self.etcd(False, f"read: {exc}")
        else:
            self.etcd(True)
            await self._hold_released([assignment_of(kv, self.vips_prefix) for kv in kvs])
            self.post(self.snapshot_step(kvs, revision))
        self.post(self.kernel_step)

    def snapshot_step(self, kvs: list[KeyValue], revision: int) -> Step:
        async def step() -> list[Action]:
            current: dict[str, Assignment] = {}
            for kv in kvs:
                vip, assignment = assignment_of(kv, self.vips_prefix)
                if assignment is not None:
                    current[vip] = assignment
            return self.core.assignments_snapshot(current, revision, time.monotonic())

        return step

    async def kernel_step(self) -> list[Action]:
        try:
            present = await self.kernel()
        except NetlinkFailure as exc:
            log.error("cannot list addresses", error=str(exc))
            await self.reopen()
            return []
        return self.core.kernel_addresses(present, time.monotonic())

    async def reconcile_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.reconcile_interval)
            if self.registration.failed:
                self.registration.publish()
            await self.post_snapshot()

    async def tick_loop(self) -> None:
        async def step() -> list[Action]:
            return self.core.tick(time.monotonic())

        while True:
            await asyncio.sleep(TICK)
            if self.core.busy:
                self.post(step)
