"""`hactl status` and `hactl history`: read-only views of the cluster."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import sys
import time

import click

from haproxy_py.cluster import maintenance
from haproxy_py.cluster.announcement import Announce
from haproxy_py.cluster.records import ClusterView
from haproxy_py.cluster.store import Store
from haproxy_py.hactl import peers, view
from haproxy_py.hactl.connection import Connection, connection_of
from haproxy_py.hactl.errors import Unreachable
from haproxy_py.hactl.etcdview import EtcdView, etcd_json, etcd_table, etcd_view
from haproxy_py.hactl.session import lease_left, run

_OUTPUT = click.Choice(["table", "json"])


@click.command()
@click.option("-o", "--output", type=_OUTPUT, default="table", show_default=True)
@click.option(
    "-w",
    "--watch",
    type=click.FloatRange(min=0.2),
    is_flag=False,
    flag_value=2.0,
    default=None,
    metavar="[SECONDS]",
    help="Refresh every SECONDS (default 2) until Ctrl-C or --count.",
)
@click.option(
    "--count",
    type=click.IntRange(min=1),
    default=None,
    help="With --watch: stop after this many refreshes.",
)
@click.pass_context
def status(ctx: click.Context, output: str, watch: float | None, count: int | None) -> None:
    """Show the controller, nodes, VIPs and who holds them, and etcd's health.

    With -o json (one document; one per line with --watch) the keys are stable:
    see docs/hactl.md.
    """
    connection = connection_of(ctx)
    if watch is None:
        count = 1

    async def body(store: Store) -> None:
        shown = 0
        while True:
            snapshot = await store.read_view()
            peers.remember(connection.cluster, snapshot)
            leases = await lease_left(store, snapshot)
            etcd = etcd_view(await maintenance.cluster_status(store))
            bgp = view.bgp_mode(snapshot)
            announcers = await announced(store, set(snapshot.nodes)) if bgp else None
            status_view = view.status_view(snapshot, leases, announcers)
            _show(connection, snapshot, status_view, etcd, output, watch)
            shown += 1
            if count is not None and shown >= count:
                return
            await asyncio.sleep(watch or 0)

    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C ends a watch
        try:
            run(connection, body)
        except Unreachable:
            _from_the_nodes(connection, output)
            raise


async def announced(store: Store, registered: set[str]) -> dict[str, tuple[str, ...]]:
    """BGP mode: VIP -> the registered nodes `announce/` permits to announce it (a node
    whose lease ended keeps its key for its return, but announces nothing)."""
    kvs, _ = await store.get_prefix(store.schema.announce_prefix)
    out: dict[str, list[str]] = {}
    for kv in kvs:
        node, record = store.schema.announce_node(kv.key), Announce.parse(kv.value)
        if node is not None and node in registered and record is not None:
            for vip in record.vips:
                out.setdefault(vip, []).append(node)
    return {vip: tuple(sorted(nodes)) for vip, nodes in out.items()}


def _from_the_nodes(connection: Connection, output: str) -> None:
    """etcd does not answer: show what the nodes say of themselves (the failsafe)."""
    nodes = peers.known_nodes(connection.cluster)
    if not nodes:
        return
    answers = peers.ask_nodes(connection, nodes)
    if output == "json":
        click.echo(json.dumps({"etcd_reachable": False, "nodes": answers}, indent=2))
        return
    click.echo(view.nodes_table(answers, time.time()))


def _show(
    connection: Connection,
    snapshot: ClusterView,
    status_view: view.StatusView,
    etcd: EtcdView,
    output: str,
    watch: float | None,
) -> None:
    now = time.time()
    if output == "json":
        doc = {**view.status_json(status_view), "etcd": etcd_json(etcd)}
        click.echo(json.dumps(doc) if watch else json.dumps(doc, indent=2))
        return
    if watch:
        if sys.stdout.isatty():
            click.clear()
        stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        click.echo(f"Every {watch:g}s: hactl status    {stamp}\n")
    click.echo(view.status_table(status_view, now))
    click.echo("")
    click.echo(etcd_table(etcd))
    if watch and not sys.stdout.isatty():
        click.echo("")
    if _looks_empty(snapshot):
        click.echo(
            f"hactl: nothing stored for cluster {connection.cluster!r} at "
            f"{', '.join(connection.etcd.endpoints)} (wrong --cluster, or nothing started yet?)",
            err=True,
        )


def _looks_empty(snapshot: ClusterView) -> bool:
    return (
        not snapshot.nodes
        and not snapshot.occupied
        and snapshot.leader is None
        and snapshot.settings is None
        and not snapshot.events
    )


@click.command()
@click.option("-n", "limit", type=click.IntRange(min=1), default=20, show_default=True)
@click.option("-o", "--output", type=_OUTPUT, default="table", show_default=True)
@click.pass_context
def history(ctx: click.Context, limit: int, output: str) -> None:
    """Show the last N VIP ownership changes (time, from, to, cause, gap)."""
    events = run(connection_of(ctx), Store.read_view).events[-limit:]
    if output == "json":
        click.echo(json.dumps(view.history_json(events), indent=2))
    else:
        click.echo(view.history_table(events))
