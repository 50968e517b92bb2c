"""`ha-controller --config FILE`: the controller daemon's entry point.

Reads `[cluster]`, `[etcd]`, `[controller]` and `[logging]` from the node
config. Expected failures (bad config, unreadable TLS files, the metrics port
taken) end with one line on stderr and a non-zero exit (2 for config, 1 for
the rest), never a traceback. An unreachable etcd is not fatal: the controller
logs it once and keeps trying, as a standby would. SIGTERM and SIGINT step
down (delete the leader key, revoke the lease) and exit 0.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from dataclasses import dataclass
from pathlib import Path

import click
import structlog

from controller.loop import Controller
from controller.metrics import ControllerMetrics
from controller.probes import Prober
from haproxy_py import __version__, certmetrics, systemd
from haproxy_py import logging as hlogging
from haproxy_py.cluster import maintenance
from haproxy_py.cluster.agent_config import AgentConfig, parse_agent
from haproxy_py.cluster.config import (
    ClusterConfig,
    ControllerConfig,
    EtcdConfig,
    LoggingConfig,
    parse_cluster,
    parse_controller,
    parse_etcd,
    parse_logging,
)
from haproxy_py.cluster.peerlink import PeerClient, PeerTls
from haproxy_py.cluster.store import Store, StoreError
from haproxy_py.configfile import ConfigError, load
from haproxy_py.metrics import serve

log = structlog.get_logger("controller")


class Fatal(Exception):
    """An expected failure; the message is the whole story for the operator."""


@dataclass(frozen=True)
class Settings:
    cluster: ClusterConfig
    etcd: EtcdConfig
    controller: ControllerConfig
    logging: LoggingConfig
    # the agents' timing and peer endpoint, for the owners' probe (None: no probe)
    agent: AgentConfig | None = None

    @property
    def identity(self) -> str:
        return self.controller.id or f"{socket.gethostname()}-{os.getpid()}"


def load_settings(path: Path) -> Settings:
    doc = load(path)
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
    return Settings(cluster, etcd, controller, parse_logging(doc), agent)


def prober(settings: Settings, store: Store) -> Prober | None:
    """The owners' authenticated probe, when this controller has a certificate and the agents
    a peer endpoint."""
    etcd, agent = settings.etcd, settings.agent
    if agent is None or not agent.peer_port or etcd.cacert is None or etcd.cert is None:
        return None
    if etcd.key is None:
        return None
    tls = PeerTls(etcd.cacert, etcd.cert, etcd.key, agent.peer_crl)
    client = PeerClient(tls, agent.timing.keepalive_timeout)
    return Prober(store, client, agent.peer_port, agent.timing)


async def run(settings: Settings) -> None:
    try:
        # Before the metrics listener: an unreadable TLS file must not leave it open.
        store = Store(settings.etcd, settings.cluster.name)
    except StoreError as exc:
        raise Fatal(str(exc)) from None
    metrics = ControllerMetrics()
    certmetrics.register(metrics.registry, lambda: [settings.etcd.cert])
    alarms = asyncio.create_task(maintenance.export_alarms(store, metrics.registry))
    runner = None
    metrics_url = None
    if settings.controller.metrics is not None:
        host, port = settings.controller.metrics
        try:
            runner, bound = await serve(metrics.registry, host, port)
        except OSError as exc:
            raise Fatal(f"cannot serve metrics on {host}:{port}: {exc.strerror}") from None
        metrics_url = f"http://{host}:{bound}/metrics"
    controller = Controller(
        store,
        settings.cluster,
        settings.controller,
        settings.identity,
        metrics=metrics,
        metrics_url=metrics_url,
        prober=prober(settings, store),
    )
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, controller.stop)
    # READY=1 after the first cycle that reached etcd: it leads, campaigned, or stands by.
    systemd.start(lambda: controller.metrics.etcd_reachable.values.get((), 0) == 1)
    try:
        await controller.run()
    finally:
        alarms.cancel()
        await store.close()
        if runner is not None:
            await runner.cleanup()


@click.command()
@click.option(
    "--config",
    "-c",
    "config",
    required=True,
    type=click.Path(path_type=Path),
    help="The TOML config file ([cluster], [etcd], [controller], [logging]).",
)
@click.option("--check-config", is_flag=True, help="Only validate the config file, then exit.")
@click.version_option(__version__)
def main(config: Path, check_config: bool) -> None:
    """Elect one active controller and keep the cluster's VIPs on healthy nodes."""
    try:
        settings = load_settings(config)
    except ConfigError as exc:
        click.echo(f"ha-controller: {exc}", err=True)
        sys.exit(2)
    if check_config:
        click.echo(f"{config}: ok")
        return
    hlogging.configure(settings.logging.level, settings.logging.json)
    try:
        asyncio.run(run(settings))
    except Fatal as exc:
        click.echo(f"ha-controller: {exc}", err=True)
        sys.exit(1)
