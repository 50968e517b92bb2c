"""`ha-agent --config FILE`: the node agent's entry point.

Expected failures (bad config, no privileges, unknown interface) end with one
line on stderr and a non-zero exit, never a traceback. etcd unreachable at
start is not one: the agent waits for it in-process, with backoff, rather than
exiting into a systemd restart loop. SIGTERM and SIGINT hand the VIPs over and
exit 0.
"""

from __future__ import annotations

import asyncio
import dataclasses
import faulthandler
import os
import signal
import sys
import threading
from pathlib import Path

import click
import structlog

from agent.daemon import Agent, Settings
from agent.effects import AddressTable
from agent.effects import Announcer as AnnouncerLike
from agent.garp import Announcer
from agent.netlink import Addresses, NetlinkFailure, missing_capabilities
from agent.proxy import ProxyClient
from haproxy_py import __version__, certmetrics, systemd
from haproxy_py import logging as hlogging
from haproxy_py.cluster.agent_config import parse_agent
from haproxy_py.cluster.config import (
    EtcdConfig,
    parse_cluster,
    parse_etcd,
    parse_logging,
    parse_node,
)
from haproxy_py.cluster.store import Store
from haproxy_py.configfile import ConfigError, load

log = structlog.get_logger("agent")
SHUTDOWN_LIMIT = 10.0  # seconds from SIGTERM to exit, at most


class Fatal(Exception):
    """An expected failure; the message is the whole story for the operator."""


def load_settings(path: Path) -> tuple[Settings, EtcdConfig, str, bool | None]:
    doc = load(path)
    node = parse_node(doc)
    cluster = parse_cluster(doc)
    agent = parse_agent(doc)
    etcd = parse_etcd(doc, "agent")
    logging = parse_logging(doc)
    settings = Settings(
        node=node, cluster=cluster.name, agent=agent, version=__version__, vips=cluster.vips
    )
    return settings, etcd, logging.level, logging.json


def agent_etcd(etcd: EtcdConfig, settings: Settings) -> EtcdConfig:
    """Every etcd call of the agent gives up within one keepalive period: a keepalive answered
    later could no longer extend the lease safely, and a stuck call would only delay retries."""
    return dataclasses.replace(
        etcd, timeout=min(etcd.timeout, settings.agent.timing.keepalive_timeout)
    )


async def serve(settings: Settings, etcd: EtcdConfig) -> None:
    etcd = agent_etcd(etcd, settings)
    interface = settings.node.interface
    try:
        addresses = await Addresses.open(interface)
    except NetlinkFailure as exc:
        raise Fatal(str(exc)) from None
    try:
        announcer = Announcer(interface, addresses.mac, settings.agent.garp, addresses.until)
    except OSError as exc:
        addresses.close()
        raise Fatal(f"cannot open a raw socket on {interface} for ARP: {exc.strerror}") from None
    proxy = ProxyClient(
        settings.agent.proxy_admin_url,
        settings.agent.health_timeout,
        settings.agent.proxy_admin_tls,
        settings.agent.proxy_admin_token,
    )
    store = Store(etcd, settings.cluster)

    async def reopen() -> tuple[AddressTable, AnnouncerLike]:
        """The VIP interface again, by name (it may have been recreated with a new index)."""
        table = await Addresses.open(interface)
        try:
            return table, Announcer(interface, table.mac, settings.agent.garp, table.until)
        except OSError:
            table.close()
            raise

    agent = Agent(settings, store, addresses, announcer, proxy, reopen)
    certmetrics.register(agent.metrics.registry, lambda: [etcd.cert])
    systemd.start(lambda: agent.core.lease_id is not None)  # READY=1 once registered
    loop = asyncio.get_running_loop()

    def stop() -> None:
        if not agent.stopping:
            loop.call_later(SHUTDOWN_LIMIT, _stuck)
            watchdog = threading.Timer(2 * SHUTDOWN_LIMIT, _frozen)
            watchdog.daemon = True  # never keeps a finished process alive
            watchdog.start()
        agent.stop()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop)
    try:
        await agent.run()
    finally:
        agent.effects.announcer.close()
        agent.effects.addresses.close()
        await proxy.close()
        await store.close()


def _stuck() -> None:
    """A stop must never hang (the VIPs are gone or expiring by now): say where, then leave."""
    for task in asyncio.all_tasks():
        frames = task.get_stack(limit=3)
        where = " <- ".join(f"{f.f_code.co_filename}:{f.f_lineno}" for f in frames)
        log.error("shutdown stuck", task=task.get_name(), at=where)
    os._exit(1)


def _frozen() -> None:
    """The event loop itself does not run any more: dump every thread and leave."""
    faulthandler.dump_traceback(all_threads=True)
    os._exit(1)


@click.command()
@click.option(
    "--config",
    "-c",
    "config",
    required=True,
    type=click.Path(path_type=Path),
    help="The node's TOML config file ([node], [cluster], [etcd], [agent], [logging]).",
)
@click.version_option(__version__)
def main(config: Path) -> None:
    """Keep this node registered in etcd and hold the VIPs the controller assigns to it."""
    try:
        settings, etcd, level, json = load_settings(config)
    except ConfigError as exc:
        click.echo(f"ha-agent: {exc}", err=True)
        sys.exit(2)
    hlogging.configure(level, json)
    missing = missing_capabilities()
    if missing:
        click.echo(
            f"ha-agent: missing {' and '.join(missing)} (needed to manage VIP addresses and "
            "send ARP); run it as root or grant those capabilities",
            err=True,
        )
        sys.exit(1)
    try:
        asyncio.run(serve(settings, etcd))
    except Fatal as exc:
        click.echo(f"ha-agent: {exc}", err=True)
        sys.exit(1)
