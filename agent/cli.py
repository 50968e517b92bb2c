"""`ha-agent --config FILE`: the node agent's entry point.

It follows the daemons' convention (`haproxy_py.daemon`): a bad config exits 2,
a start failure (no privileges, unknown interface) 1, each in one line on
stderr. etcd unreachable at start is not a failure: the agent waits for it
in-process, with backoff, rather than exiting into a systemd restart loop.
SIGTERM and SIGINT hand the VIPs over and exit 0.
"""

from __future__ import annotations

import asyncio
import dataclasses
import faulthandler
import os
import signal
import threading
from pathlib import Path

import click
import structlog
from pyroute2 import AsyncIPRoute

from agent import bgp
from agent.bgpside import BgpSide
from agent.daemon import Agent, AgentFileConfig
from agent.effects import AddressTable
from agent.effects import Announcer as AnnouncerLike
from agent.garp import Announcer
from agent.netlink import Addresses, NetlinkFailure, missing_capabilities
from agent.proxy import ProxyClient
from haproxy_py import __version__, certmetrics, daemon
from haproxy_py.cluster.agent_config import parse_agent
from haproxy_py.cluster.bgp_config import BgpConfig, parse_bgp
from haproxy_py.cluster.config import EtcdConfig, parse_cluster, parse_etcd, parse_node
from haproxy_py.cluster.peerlink import PeerTls
from haproxy_py.cluster.store import Store
from haproxy_py.cluster.tasks import settle
from haproxy_py.configfile import ConfigError, Table
from haproxy_py.daemon import Fatal

log = structlog.get_logger("agent")
NAME = "ha-agent"
SHUTDOWN_LIMIT = 10.0  # seconds from SIGTERM to exit, at most


def parse(doc: Table) -> tuple[AgentFileConfig, EtcdConfig]:
    """The agent's sections of the node's file: [node], [cluster], [agent], [etcd], and [bgp]
    in BGP mode."""
    node = parse_node(doc)
    cluster = parse_cluster(doc)
    speaker = parse_bgp(doc)
    if cluster.mode == "bgp" and speaker is None:
        raise ConfigError(f"{doc.file}: cluster.mode is bgp but there is no [bgp] section")
    agent = parse_agent(doc)
    etcd = parse_etcd(doc, "agent")
    peer_tls = None
    if etcd.cacert is not None and etcd.cert is not None and etcd.key is not None:
        peer_tls = PeerTls(etcd.cacert, etcd.cert, etcd.key, agent.peer_crl)
    settings = AgentFileConfig(
        node=node,
        cluster=cluster.name,
        agent=agent,
        version=__version__,
        vips=cluster.vips,
        failsafe=cluster.failsafe and not agent.timing.lapse,  # (a lapse outruns its rounds)
        peer_tls=peer_tls,
        bgp=speaker if cluster.mode == "bgp" else None,
    )
    return settings, etcd


def agent_etcd(etcd: EtcdConfig, settings: AgentFileConfig) -> EtcdConfig:
    """Every etcd call of the agent gives up within one keepalive period: a keepalive answered
    later could no longer extend the lease safely, and a stuck call would only delay retries."""
    return dataclasses.replace(
        etcd, timeout=min(etcd.timeout, settings.agent.timing.keepalive_timeout)
    )


def bgp_side(
    settings: AgentFileConfig,
    speaker: BgpConfig,
    agent: Agent,
    proxy: ProxyClient,
    ipr: AsyncIPRoute,
) -> BgpSide:
    cfg = settings.agent
    announcer = bgp.Announcer(
        bgp.Settings(
            speaker.control_socket,
            Path(speaker.node.announce_file),
            speaker.node.live_link,
            cfg.health_interval,
            cfg.health_timeout,
            cfg.health_fall,
            bgp.Drain(timeout=speaker.drain_timeout),
        ),
        ipr,
        proxy,
    )
    grace = cfg.timing.lease_ttl + cfg.health_rise * cfg.health_interval + cfg.reconcile_interval
    registration = agent.registration

    def publish(states: dict[str, str]) -> None:
        registration.bgp = states
        registration.publish()

    peers = {p.name: p.address for p in speaker.node.peers}
    side = BgpSide(
        announcer, agent.core, agent.store, cfg.reconcile_interval, grace, peers, publish
    )
    side.register(agent.metrics.registry)
    if agent.failsafe is not None:
        agent.failsafe.holding = side.announcing
    return side


async def serve(settings: AgentFileConfig, etcd: EtcdConfig) -> None:
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
    daemon.ready(NAME, lambda: agent.core.lease_id is not None)  # once registered
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
    ipr, announcing = None, None
    speaker = settings.bgp
    if speaker is not None:
        ipr = AsyncIPRoute()
        side = bgp_side(settings, speaker, agent, proxy, ipr)
        announcing = asyncio.create_task(side.run(), name="bgp")
    try:
        await agent.run()
    finally:
        if announcing is not None:
            announcing.cancel()
            await settle([announcing])
        if ipr is not None:
            ipr.close()
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
@daemon.config_option("[node], [cluster], [etcd], [agent], [logging]")
@daemon.check_config_option
@click.version_option(__version__)
def main(config: Path, check_config: bool) -> None:
    """Keep this node registered in etcd and hold the VIPs the controller assigns to it."""
    (settings, etcd), logging = daemon.load(NAME, config, parse)
    if check_config:
        daemon.checked(config)
        return
    daemon.start_logging(logging)
    missing = missing_capabilities()
    if missing:
        daemon.fail(
            NAME,
            f"missing {' and '.join(missing)} (needed to manage VIP addresses and "
            "send ARP); run it as root or grant those capabilities",
        )
    daemon.run(NAME, config, serve(settings, etcd))
