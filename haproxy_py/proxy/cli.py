"""`haproxy-py run --config FILE` and `haproxy-py check-config FILE`.

`check` validates what the proxy reads; `check-config` (and `run
--check-config`) validates every section of a node's file as each daemon
would read it, so Ansible's `validate:` catches an agent or controller
mistake before it is installed. `run` follows the daemons' convention
(`haproxy_py.daemon`): `[logging]` sets the log level and format
(`--log-level` overrides the level), exit 2 for a bad config, 1 when it
cannot start.
"""

from __future__ import annotations

import asyncio
import dataclasses
import resource
import signal
from pathlib import Path

import click
import structlog

from haproxy_py import certmetrics, daemon
from haproxy_py.cluster.agent_config import parse_agent
from haproxy_py.cluster.config import (
    DAEMONS,
    parse_cluster,
    parse_controller,
    parse_etcd,
    parse_logging,
    parse_node,
)
from haproxy_py.configfile import ConfigError, Table, load
from haproxy_py.proxy.config import ProxyConfig, parse_proxy, trusts_anyone
from haproxy_py.proxy.master import Master, worker_count

log = structlog.get_logger(__name__)
NAME = "haproxy-py"


def check(doc: Table) -> tuple[str, ProxyConfig]:
    """Validate every section the proxy node reads; returns (node name, proxy config)."""
    node = parse_node(doc)
    return node.name, parse_proxy(doc)


def check_node_file(doc: Table) -> None:
    """Every section of a node's file, as the proxy, the agent and the controller read them."""
    check(doc)
    parse_cluster(doc)
    parse_logging(doc)
    etcd = parse_etcd(doc)
    for name in DAEMONS:  # each daemon's own identity, when the file gives one
        parse_etcd(doc, name)
    if "controller" in doc.data:
        parse_controller(doc, etcd)
    if "agent" in doc.data:
        parse_agent(doc)


def _use_uvloop() -> bool:
    try:
        import uvloop
    except ImportError:
        return False
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return True


def _raise_fd_limit() -> None:
    """Every client and upstream socket is a file descriptor: allow as many as the hard limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


async def _serve(server: Master, config_file: Path) -> None:
    """Run until a signal: SIGTERM drains then exits (a second one exits at once), SIGINT
    exits at once, SIGHUP reloads the config file."""
    loop = asyncio.get_running_loop()
    stop, drain, hup = asyncio.Event(), asyncio.Event(), asyncio.Event()
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGTERM, lambda: stop.set() if drain.is_set() else drain.set())
    loop.add_signal_handler(signal.SIGHUP, hup.set)
    await server.start()
    daemon.ready(NAME, lambda: True)  # listening: start() bound every listener
    certmetrics.register(
        server.admin.registry, lambda: certmetrics.proxy_files(server.runtime.config)
    )
    reloader = loop.create_task(_reload_on_hup(server, config_file, hup))
    stopped = loop.create_task(stop.wait())
    drained = loop.create_task(drain.wait())
    try:
        await asyncio.wait([stopped, drained], return_when=asyncio.FIRST_COMPLETED)
        if not stop.is_set():
            log.info("draining", reason="SIGTERM")
            draining = loop.create_task(server.drain())
            await asyncio.wait([stopped, draining], return_when=asyncio.FIRST_COMPLETED)
            draining.cancel()
        log.info("stopping", reason="signal")
    finally:
        for task in (reloader, stopped, drained):
            task.cancel()
        await server.stop()


async def _reload_on_hup(server: Master, config_file: Path, hup: asyncio.Event) -> None:
    """Reload on each SIGHUP; a file that fails validation is logged and the old config stays."""
    while True:
        await hup.wait()
        hup.clear()
        try:
            _, config = check(load(config_file))
            await server.reload(config)
        except ConfigError as exc:
            log.error("reload rejected, the running config stays", error=str(exc))
        except OSError as exc:
            log.error("reload failed, the running config stays", error=exc.strerror or str(exc))


@click.group()
def main() -> None:
    """haproxy-py: the proxy node of a haproxy_py cluster."""


@main.command("check-config")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
def check_config(file: Path) -> None:
    """Validate FILE; exit 0 if it is usable, else 2 with the problem."""
    _check_node_file(file)


def _check_node_file(file: Path) -> None:
    try:
        doc = load(file)
        check_node_file(doc)
    except ConfigError as exc:
        daemon.fail(NAME, str(exc), daemon.EXIT_CONFIG)
    for listener in parse_proxy(doc).listeners:
        if trusts_anyone(listener.trusted_proxies):
            click.echo(
                f"{file}: warning: listeners {listener.name!r}: trusted_proxies lets any "
                "address send a PROXY header, so any client can choose the address it is seen as",
                err=True,
            )
    if "admin" in doc.data:
        click.echo(
            f"{file}: note: [admin] bind and tls (cert, key, client_ca) take effect at the next "
            "start; tokens, client_names and crl on SIGHUP",
            err=True,
        )
    daemon.checked(file)


@main.command()
@daemon.config_option("every daemon's sections; the proxy reads [node], [proxy] and the rest")
@daemon.check_config_option
@click.option(
    "--log-level",
    default=None,
    help="Overrides the level in [logging].",
    type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False),
)
def run(config: Path, check_config: bool, log_level: str | None) -> None:
    """Run the proxy node described by the config file (SIGHUP reloads, SIGTERM drains)."""
    if check_config:
        _check_node_file(config)
        return
    (node_name, proxy), logging = daemon.load(NAME, config, check)
    log_level = log_level or logging.level
    daemon.start_logging(logging, log_level)
    _raise_fd_limit()
    _use_uvloop()
    workers = worker_count(proxy.proxy.workers)
    master = Master(proxy, node_name, workers, dataclasses.replace(logging, level=log_level))
    daemon.run(NAME, config, _serve(master, config), start_errors=(OSError,))
