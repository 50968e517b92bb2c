"""The agent's wiring: the pure core (`agent.state`) and the parts around it.

Observers post steps, the actor (`agent.actor`) runs them against the core one at
a time, the effects carry out the actions they return. Every long-lived task is
supervised: a failed actor or writer ends the process (systemd restarts it), a
failed observer is started again. A clean stop hands every VIP over before the
lease goes (`agent.release`).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import structlog

from agent.actor import Actor
from agent.effects import AddressTable, Announcer, Effects, EtcdState, Reopen, Write, Writer
from agent.failsafeloop import FailsafeLoop
from agent.handover import WAIT, Handover
from agent.hysteresis import Hysteresis
from agent.metrics import AgentMetrics
from agent.observers import Observers
from agent.proxy import ProxyClient
from agent.registration import Registration
from agent.release import release_all
from agent.state import AgentCore
from haproxy_py.cluster.agent_config import AgentConfig
from haproxy_py.cluster.bgp_config import BgpConfig
from haproxy_py.cluster.config import NodeConfig
from haproxy_py.cluster.peerlink import PeerTls
from haproxy_py.cluster.storeapi import KVStore
from haproxy_py.cluster.tasks import settle, supervised, unless_stopped, until_stopped

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class AgentFileConfig:
    node: NodeConfig
    cluster: str
    agent: AgentConfig
    version: str
    vips: tuple[str, ...] = ()  # the cluster's VIPs if this node's config lists them
    handover_wait: float = WAIT  # a released VIP's clients go once its new owner holds it
    failsafe: bool = True  # [cluster] failsafe
    peer_tls: PeerTls | None = None  # this agent's certificates: the peer endpoint needs them
    bgp: BgpConfig | None = None  # BGP mode (`agent.bgpside`): a clean stop hands nothing over


class Agent:
    """One node agent: run() until `stop()`, then hand everything over and return."""

    def __init__(
        self,
        settings: AgentFileConfig,
        store: KVStore,
        addresses: AddressTable,
        announcer: Announcer,
        proxy: ProxyClient,
        reopen: Reopen | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        cfg = settings.agent
        self.core = AgentCore(
            settings.node.name,
            cfg.timing,
            Hysteresis(cfg.health_rise, cfg.health_fall),
            cfg.allowed,
        )
        self.actor = Actor(self.core, lambda actions: self.effects.run(actions))
        self.core.known_vips.update(v for v in settings.vips if cfg.allowed.allows(v))
        self.metrics = AgentMetrics(
            lambda: self.core.clock.deadline - time.monotonic(), lambda: list(self.core.held)
        )
        self.etcd = EtcdState(self.metrics)
        self.writer = Writer(
            self.etcd, lambda lease: self.actor.post(self.observers.lease_lost_step(lease))
        )
        # BGP mode: a return is one record write, once the first probes have a verdict
        first_wait = cfg.health_interval * (cfg.health_rise + 1) if settings.bgp else 0.0
        self.registration = Registration(
            settings.node, settings.version, self.core, store, self._enqueue, first_wait
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
        self.registration.shown = lambda vip: vip in self.effects.shown
        self.observers = Observers(
            cfg,
            self.core,
            store,
            proxy,
            self.registration,
            self.metrics,
            self.etcd,
            self.actor.post,
            lambda: self.effects.addresses.expiring(),
            self.effects.reopen_if_recreated,
        )
        self.observers.proxy_back = lambda: self.handover.proxy_back(self.core.known_vips)
        self.observers.before_release = lambda vip: self.handover.hold([vip])
        self.failsafe: FailsafeLoop | None = None
        if settings.peer_tls is not None and cfg.peer_port:
            self.failsafe = FailsafeLoop(
                self.core,
                store,
                settings.peer_tls,
                cfg.peer_port,
                settings.failsafe,
                cfg.reconcile_interval,
                self.actor.post,
                self.registration.outage_bridged,
            )
            self.etcd.on_ok = self.failsafe.etcd_ok
            self.etcd.on_failed = self.failsafe.etcd_failed
            self.failsafe.register(self.metrics.registry)
        else:
            log.warning("no peer endpoint (no client certificate, or peer_port = 0): no failsafe")
        self._stop = asyncio.Event()

    # --- hooks the parts call -----------------------------------------------------------

    def _enqueue(self, write: Write) -> None:
        self.writer.write(self.core.lease_id, write)

    def publish(self) -> None:
        self.registration.publish()

    def keepalive_now(self) -> None:
        self.observers.keepalive_now.set()

    def regrant(self, revoke: int = 0) -> None:
        self.observers.regrant_soon(revoke)

    def confirm_removals(self) -> None:
        self.actor.post(self.observers.kernel_step)

    def released(self, vip: str) -> None:
        self.handover.released([vip])

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        """Register (waiting for etcd as long as it takes), serve until stop(), then hand over."""
        revision = await unless_stopped(self._stop, self.observers.first_registration())
        if revision is None:
            return
        core_tasks = [
            asyncio.create_task(supervised(name, run, restart=False), name=name)
            for name, run in (("actor", self.actor.run), ("writer", self.writer.run))
        ]
        host = self.settings.node.address or "0.0.0.0"
        peer = await self.failsafe.serve(host) if self.failsafe is not None else []
        tasks = [*core_tasks, *self.observers.start(revision + 1), *peer]
        cfg = self.settings.agent
        runner = await self.metrics.serve(cfg.metrics_host, cfg.metrics_port)
        try:
            await until_stopped(self._stop, core_tasks)
            if self.settings.bgp is None:  # BGP: BIRD keeps announcing, the lease expires
                await release_all(
                    self.core,
                    self.actor.post,
                    self.effects,
                    self.handover,
                    self.store,
                    self.settings.handover_wait,
                )
        finally:
            drains = self.handover.cancel()
            for task in tasks:
                task.cancel()
            await settle([*tasks, *drains])
            if self.observers.registrar is not None:
                self.observers.registrar.cancel()
            if runner is not None:
                await runner.cleanup()
            if self.failsafe is not None:
                await self.failsafe.close()
