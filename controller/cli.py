"""`ha-controller --config FILE`: the controller daemon's entry point.

Reads `[cluster]`, `[etcd]`, `[controller]` and `[logging]` from the node
config, and follows the daemons' convention (`haproxy_py.daemon`: exit 2 for
a bad config, 1 for a start failure such as unreadable TLS files or the
metrics port taken). An unreachable etcd is not fatal: the controller logs it
once and keeps trying, as a standby would. SIGTERM and SIGINT step down
(delete the leader key, revoke the lease) and exit 0.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
from dataclasses import dataclass
from pathlib import Path

import click
import structlog
from aiohttp import web
from cryptography import x509

from controller import peer
from controller.election import Election
from controller.loop import Controller
from controller.metrics import ControllerMetrics
from controller.probes import Prober
from haproxy_py import __version__, certmetrics, daemon
from haproxy_py.cluster import maintenance, peerserve
from haproxy_py.cluster.agent_config import AgentConfig, parse_agent
from haproxy_py.cluster.config import (
    ClusterConfig,
    ControllerConfig,
    EtcdConfig,
    parse_cluster,
    parse_controller,
    parse_etcd,
    parse_node,
)
from haproxy_py.cluster.controlkeys import PeerAddress
from haproxy_py.cluster.peerlink import PeerClient, PeerTls, common_name
from haproxy_py.cluster.store import Store, StoreError
from haproxy_py.configfile import ConfigError, Table
from haproxy_py.daemon import Fatal
from haproxy_py.metrics import serve

NAME = "ha-controller"
log = structlog.get_logger("controller")


@dataclass(frozen=True)
class ControllerFileConfig:
    """What the node's file says for the controller: its sections, parsed."""

    cluster: ClusterConfig
    etcd: EtcdConfig
    controller: ControllerConfig
    # the agents' timing and peer endpoint, for the owners' probe (None: no probe)
    agent: AgentConfig | None = None
    address: str | None = None  # `[node] address`: where our own peer endpoint listens

    @property
    def identity(self) -> str:
        return self.controller.id or f"{socket.gethostname()}-{os.getpid()}"


def parse(doc: Table) -> ControllerFileConfig:
    cluster = parse_cluster(doc)
    etcd = parse_etcd(doc, "controller")
    controller = parse_controller(doc, etcd)
    if not cluster.vips:
        doc.table("cluster", {}).fail("vips", "missing; the controller needs at least one VIP")
    try:
        agent: AgentConfig | None = parse_agent(doc)
    except ConfigError as exc:  # e.g. the agent's own key files, unreadable to this user
        log.warning("no owner probes: [agent] unreadable here", error=str(exc))
        agent = None
    return ControllerFileConfig(cluster, etcd, controller, agent, parse_node(doc).address)


def peer_tls(settings: ControllerFileConfig) -> PeerTls | None:
    """This controller's certificate for the peer calls (None: etcd without client TLS)."""
    etcd, agent = settings.etcd, settings.agent
    if etcd.cacert is None or etcd.cert is None or etcd.key is None:
        return None
    return PeerTls(etcd.cacert, etcd.cert, etcd.key, agent.peer_crl if agent else None)


def prober(settings: ControllerFileConfig, store: Store) -> Prober | None:
    """The authenticated probe of owners and leader, when this controller has a certificate
    and the agents a peer endpoint."""
    agent, tls = settings.agent, peer_tls(settings)
    if agent is None or not agent.peer_port or tls is None:
        return None
    client = PeerClient(tls, agent.timing.keepalive_timeout)
    return Prober(store, client, agent.peer_port, agent.timing, settings.identity)


async def endpoint(
    settings: ControllerFileConfig, election: Election
) -> tuple[web.AppRunner, asyncio.AbstractServer] | None:
    """Our own peer endpoint (`controller.peer`), named in our leader record."""
    tls, port, address = peer_tls(settings), settings.controller.peer_port, settings.address
    if tls is None or not port or address is None:
        return None
    name = common_name(x509.load_pem_x509_certificate(tls.cert.read_bytes()))
    if name is None:
        raise Fatal(f"{tls.cert}: the certificate has no common name")
    try:
        runner, server, bound = await peer.start(name, tls, address, port)
    except OSError as exc:
        raise Fatal(f"cannot serve the peer endpoint on {address}:{port}: {exc.strerror}") from None
    election.peer = PeerAddress(address, bound, name)
    return runner, server


async def run(settings: ControllerFileConfig) -> None:
    try:
        # Before the metrics listener: an unreadable TLS file must not leave it open.
        store = Store(settings.etcd, settings.cluster.name)
    except StoreError as exc:
        raise Fatal(str(exc)) from None
    metrics = ControllerMetrics()
    certmetrics.register(metrics.registry, lambda: [settings.etcd.cert])
    runner = None
    metrics_url = None
    if settings.controller.metrics is not None:
        host, port = settings.controller.metrics
        try:
            runner, bound = await serve(metrics.registry, host, port)
        except OSError as exc:
            raise Fatal(f"cannot serve metrics on {host}:{port}: {exc.strerror}") from None
        metrics_url = f"http://{host}:{bound}/metrics"
    alarms = asyncio.create_task(maintenance.export_alarms(store, metrics.registry))
    controller = Controller(
        store,
        settings.cluster,
        settings.controller,
        settings.identity,
        metrics=metrics,
        metrics_url=metrics_url,
        prober=prober(settings, store),
    )
    served = await endpoint(settings, controller.election)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, controller.stop)
    # Ready after the first cycle that reached etcd: it leads, campaigned, or stands by.
    daemon.ready(NAME, lambda: controller.metrics.etcd_reachable.values.get((), 0) == 1)
    try:
        await controller.run()
    finally:
        alarms.cancel()
        if served is not None:
            await peerserve.close(*served)
        await store.close()
        if runner is not None:
            await runner.cleanup()


@click.command()
@daemon.config_option("[cluster], [etcd], [controller], [logging]")
@daemon.check_config_option
@click.version_option(__version__)
def main(config: Path, check_config: bool) -> None:
    """Elect one active controller and keep the cluster's VIPs on healthy nodes."""
    settings, logging = daemon.load(NAME, config, parse)
    if check_config:
        daemon.checked(config)
        return
    daemon.start_logging(logging)
    daemon.run(NAME, config, run(settings))
