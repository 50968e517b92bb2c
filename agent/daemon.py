"""The agent's wiring: one actor around the pure core (`agent.state`).

Observers (`agent.observers`: lease keepalive, liveness probes, the `vips/`
watch, a level-triggered reconcile timer, a fencing tick) only post steps to
one queue; a single actor task runs them against the core and hands the
actions it returns to `agent.effects` (netlink, GARP, etcd writes on their own
writer task). `agent.registration` writes `nodes/<name>`; `agent.handover`
tells a released VIP's clients to go once the next owner holds it.

Every long-lived task is supervised: the actor and the writer carry the
core's consistency, so their failure ends the process (systemd restarts it);
an observer that fails is logged and started again.

A clean stop hands over first and drains per VIP: the node record says
`stopping`, the addresses go, the VIP keys are released once the kernel shows
them gone (the controller reassigns them at once, as a planned move), each
released VIP's connections are closed cleanly when its new owner holds it,
and only then is the lease revoked. The proxy itself is never drained as a
whole.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import structlog

from agent.effects import AddressTable, Announcer, Effects, EtcdState, Reopen, Write, Writer
from agent.failsafe import Outage
from agent.failsafeloop import FailsafeLoop
from agent.handover import Handover
from agent.hysteresis import Hysteresis
from agent.metrics import AgentMetrics
from agent.observers import Observers, Step
from agent.proxy import ProxyClient
from agent.registration import Registration
from agent.state import Action, AgentCore
from haproxy_py.cluster.agent_config import AgentConfig
from haproxy_py.cluster.config import NodeConfig
from haproxy_py.cluster.peerlink import PeerTls
from haproxy_py.cluster.store import StoreError
from haproxy_py.cluster.storeapi import KVStore
from haproxy_py.cluster.tasks import settle, supervised

log = structlog.get_logger(__name__)

STOP_STEP_LIMIT = 5.0  # removing the addresses and revoking the lease at stop, at most


@dataclass(frozen=True)
class Settings:
    node: NodeConfig
    cluster: str
    agent: AgentConfig
    version: str
    vips: tuple[str, ...] = ()  # the cluster's VIPs if this node's config lists them
    # a released VIP's clients are told to go once it has a new owner, or after this long
    handover_wait: float = 1.0
    failsafe: bool = True  # [cluster] failsafe
    peer_tls: PeerTls | None = None  # this agent's certificates: the peer endpoint needs them


class Agent:
    """One node agent: run() until `stop()`, then hand everything over and return."""

    def __init__(
        self,
        settings: Settings,
        store: KVStore,
        addresses: AddressTable,
        announcer: Announcer,
        proxy: ProxyClient,
        reopen: Reopen | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.proxy = proxy
        cfg = settings.agent
        self.core = AgentCore(
            settings.node.name,
            cfg.timing,
            Hysteresis(cfg.health_rise, cfg.health_fall),
            cfg.allowed,
        )
        self.core.known_vips.update(v for v in settings.vips if cfg.allowed.allows(v))
        self.metrics = AgentMetrics(
            lambda: self.core.deadline - time.monotonic(), lambda: list(self.core.held)
        )
        self.etcd = EtcdState(self.metrics)
        self.writer = Writer(self.etcd, self._lease_lost)
        self.registration = Registration(
            settings.node, settings.version, self.core, store, self._enqueue
        )
        self.handover = Handover(
            store,
            proxy,
            settings.node.name,
            lambda vip: vip in self.core.held,
            settings.handover_wait,
            lambda vip: self.effects.let_out(vip),
        )
        self.effects = Effects(
            self.core,
            addresses,
            announcer,
            store,
            self.writer,
            self.metrics,
            cfg.vip_prefix_length,
            self,
            reopen,
        )
        self.observers = Observers(
            cfg,
            self.core,
            store,
            proxy,
            self.registration,
            self.metrics,
            self.etcd,
            self._post,
            lambda: self.effects.addresses.expiring(),
            self.effects.reopen_if_recreated,
        )
        self.observers.proxy_back = lambda: self.handover.proxy_back(self.core.known_vips)
        self.failsafe: FailsafeLoop | None = None
        if settings.peer_tls is not None and cfg.peer_port:
            self.failsafe = FailsafeLoop(
                self.core,
                store,
                settings.peer_tls,
                cfg.peer_port,
                settings.failsafe,
                cfg.reconcile_interval,
                self._post,
                self._outage,
            )
            self.etcd.on_ok = self.failsafe.etcd_ok
            self.failsafe.register(self.metrics.registry)
        self._queue: asyncio.Queue[Step] = asyncio.Queue()
        self._stop = asyncio.Event()
        self._registrar: asyncio.Task[None] | None = None
        self._handed: set[str] = set()  # VIPs whose clients the hand-over already saw to

    # --- hooks the effects call ----------------------------------------------------------

    def publish(self) -> None:
        self.registration.publish()

    def keepalive_now(self) -> None:
        self.observers.keepalive_now.set()

    def regrant(self) -> None:
        if self._registrar is None or self._registrar.done():
            self._registrar = asyncio.create_task(
                supervised("regrant", self.observers.regrant, once=True), name="regrant"
            )

    def confirm_removals(self) -> None:
        self._post(self.observers.kernel_step)

    def released(self, vip: str) -> None:
        self._handed.add(vip)
        self.handover.released([vip])

    # --- lifecycle -------------------------------------------------------------------------

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        """Register (waiting for etcd as long as it takes), serve until stop(), then hand over."""
        started = asyncio.create_task(self._start(), name="start")
        stopped = asyncio.create_task(self._stop.wait(), name="stop")
        await asyncio.wait([started, stopped], return_when=asyncio.FIRST_COMPLETED)
        if not started.done():
            started.cancel()
            await settle([started, stopped])
            return
        stopped.cancel()
        revision = started.result()
        core_tasks = [
            asyncio.create_task(supervised(name, run, restart=False), name=name)
            for name, run in (("actor", self._actor), ("writer", self.writer.run))
        ]
        tasks = [*core_tasks, *self.observers.start(revision + 1), *await self._peer()]
        cfg = self.settings.agent
        runner = await self.metrics.serve(cfg.metrics_host, cfg.metrics_port)
        stopped = asyncio.create_task(self._stop.wait(), name="stop")
        try:
            done, _ = await asyncio.wait(
                [stopped, *core_tasks], return_when=asyncio.FIRST_COMPLETED
            )
            for task in done:
                failure = None if task is stopped or task.cancelled() else task.exception()
                if failure is not None:
                    raise failure
            await self._release()
        finally:
            stopped.cancel()
            drains = self.handover.cancel()
            for task in tasks:
                task.cancel()
            await settle([*tasks, *drains])
            if self._registrar is not None:
                self._registrar.cancel()
            if runner is not None:
                await runner.cleanup()
            if self.failsafe is not None:
                await self.failsafe.close()

    async def _peer(self) -> list[asyncio.Task[None]]:
        """The peer endpoint and the failsafe's loops; without them the node still serves
        (its VIPs then last only as long as its lease), so a bind failure is logged."""
        if self.failsafe is None:
            log.warning("no peer endpoint (no client certificate, or peer_port = 0): no failsafe")
            return []
        host = self.settings.node.address or "0.0.0.0"
        try:
            return await self.failsafe.start(host)
        except OSError as exc:
            log.error("peer endpoint not started; no failsafe", error=exc.strerror, host=host)
            return []

    def _outage(self, outage: Outage) -> None:
        """etcd answers again after the failsafe kept VIPs: say so in the node record."""
        ago = time.monotonic() - time.time()
        self.registration.failsafe = (outage.since - ago, outage.until - ago, outage.rounds)
        self.registration.publish()

    async def _start(self) -> int:
        """Lease and first snapshot, retrying in-process while etcd is unreachable."""
        self._post(await self.observers.grant_until_granted())
        kvs, revision = await self.observers.until_answered("read", self.observers.read_vips)
        self._post(self.observers.snapshot_step(kvs, revision))
        self._post(self.observers.kernel_step)
        return revision

    async def _release(self) -> None:
        """SIGTERM: drop every VIP and release its key once the kernel shows it gone; close
        each one's connections when its new owner holds it; then revoke the lease."""
        started = time.monotonic()
        held = sorted(self.core.held)

        async def stop_step() -> list[Action]:
            return self.core.stop(time.monotonic())

        self._post(stop_step)
        try:
            async with asyncio.timeout(STOP_STEP_LIMIT):
                await self.effects.released.wait()
        except TimeoutError:
            log.error("VIPs not released in time; the kernel lifetime and the lease remove them")
        released = time.monotonic()
        # those whose release acknowledgement already started it are not told twice
        self.handover.released(v for v in held if v not in self._handed)
        await self.handover.finish(self.settings.handover_wait + 1.0)
        await self._revoke()
        log.info(
            "agent stopped",
            vips=held,
            release_ms=round((released - started) * 1000, 1),
            total_ms=round((time.monotonic() - started) * 1000, 1),
        )

    async def _revoke(self) -> None:
        lease = self.core.lease_id
        if lease is None:
            return
        try:
            await self.store.revoke(lease)
        except StoreError as exc:
            log.warning("lease revoke failed; it expires by itself", error=str(exc))

    # --- the actor and the writer ---------------------------------------------------------

    def _post(self, step: Step) -> None:
        self._queue.put_nowait(step)

    def _enqueue(self, write: Write) -> None:
        self.writer.write(self.core.lease_id, write)

    def _lease_lost(self, lease: int) -> None:
        self._post(self.observers.lease_lost_step(lease))

    async def _actor(self) -> None:
        while True:
            step = await self._queue.get()
            try:
                # The fence first: after a stall, steps queued meanwhile (a late keepalive,
                # a watch event) are acted on only once passed deadlines are enforced.
                fenced = self.core.fence(time.monotonic())
                if fenced:
                    log.warning("fence deadline passed before the next step; fenced first")
                    await self.effects.run(fenced)
                await self.effects.run(await step())
            finally:
                self._queue.task_done()
