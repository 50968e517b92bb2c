"""`hactl failover|pause|resume|drain|undrain`: requests the controller carries out.

Each command reads the cluster, checks the request against it (so an unknown
node or a missing controller is reported at once), writes `requests/<id>`,
waits for the controller's result and prints it. Nothing here touches an IP.
"""

from __future__ import annotations

import time
from typing import Literal

import click

from haproxy_py.cluster.records import ClusterView, Request
from haproxy_py.cluster.store import Store
from haproxy_py.hactl import complete, intent
from haproxy_py.hactl.connection import connection_of
from haproxy_py.hactl.errors import Refused
from haproxy_py.hactl.session import run, submit_and_wait
from haproxy_py.hactl.table import printable

_TIMEOUT = click.option(
    "--timeout",
    type=click.FloatRange(min=0.1),
    default=10.0,
    show_default=True,
    help="Seconds to wait for the controller's result.",
)
_YES = click.option("-y", "--yes", is_flag=True, help="Do not ask for confirmation.")


def _confirm(question: str, yes: bool) -> None:
    if not yes and not click.confirm(question, default=False):
        raise Refused("aborted: nothing was changed")


def _outcome(request: Request) -> list[str]:
    """The lines describing a finished request; Refused unless the controller did it."""
    assert request.result is not None  # submit_and_wait returns only final results
    return intent.describe_result(request, request.result)


def _print_result(request: Request) -> None:
    for line in _outcome(request):
        click.echo(printable(line))  # the controller's message comes from etcd


@click.command()
@click.option(
    "--to",
    "target",
    metavar="NODE",
    shell_complete=complete.nodes,
    help="Target node (default: the best other one).",
)
@click.option(
    "--vip", metavar="VIP", shell_complete=complete.vips, help="Move only this VIP (default: all)."
)
@_YES
@_TIMEOUT
@click.pass_context
def failover(
    ctx: click.Context, target: str | None, vip: str | None, yes: bool, timeout: float
) -> None:
    """Move a VIP (or every VIP) to another node.

    Prints each move and how long it took, e.g. `198.18.0.100: node-a ->
    node-b in 38 ms`. The old node closes its WebSockets with 1001 Going Away
    so clients reconnect at once. Allowed in maintenance mode.
    """

    async def body(store: Store) -> Request:
        snapshot = await store.read_view()
        intent.check_failover(snapshot, vip, target)
        _confirm(intent.failover_prompt(snapshot, vip, target), yes)
        request = intent.new_request("move", time.time(), vip=vip, target=target)
        return await submit_and_wait(store, request, timeout)

    _print_result(run(connection_of(ctx), body))


@click.command()
@_TIMEOUT
@click.pass_context
def pause(ctx: click.Context, timeout: float) -> None:
    """Enter maintenance mode (no automatic failover).

    Manual failover still works; `hactl status` shows the mode.
    """
    _maintenance(ctx, "pause", timeout)


@click.command()
@_TIMEOUT
@click.pass_context
def resume(ctx: click.Context, timeout: float) -> None:
    """Leave maintenance mode (automatic failover again)."""
    _maintenance(ctx, "resume", timeout)


def _maintenance(ctx: click.Context, kind: Literal["pause", "resume"], timeout: float) -> None:
    want_paused = kind == "pause"

    async def body(store: Store) -> Request | None:
        snapshot = await store.read_view()
        intent.require_leader(snapshot, kind)
        if snapshot.settings is not None and snapshot.settings.paused == want_paused:
            return None
        request = intent.new_request(kind, time.time())
        return await submit_and_wait(store, request, timeout)

    done = run(connection_of(ctx), body)
    if done is not None:
        _outcome(done)  # raises Refused if the controller did not do it
    if want_paused:
        click.echo("Maintenance mode on: no automatic failover until `hactl resume`.")
    else:
        click.echo("Maintenance mode off: automatic failover is active.")


@click.command()
@click.argument("node", shell_complete=complete.nodes)
@_YES
@_TIMEOUT
@click.pass_context
def drain(ctx: click.Context, node: str, yes: bool, timeout: float) -> None:
    """Take NODE out of service.

    Its VIPs move to other nodes first, then its proxy closes its WebSockets
    with 1001 Going Away; it gets no VIP until `hactl undrain NODE`.
    """

    async def body(store: Store) -> Request | None:
        snapshot = await store.read_view()
        intent.require_leader(snapshot, "drain")
        intent.require_node(snapshot, node, include_drained=True)
        if _drained(snapshot, node):
            return None
        held = ", ".join(snapshot.vips_of(node)) or "no VIPs"
        _confirm(f"Drain {node} (holds {held}) and close its WebSockets?", yes)
        request = intent.new_request("drain", time.time(), node=node)
        return await submit_and_wait(store, request, timeout)

    done = run(connection_of(ctx), body)
    if done is None:
        click.echo(f"{node} is already drained.")
        return
    _print_result(done)  # the moves of its VIPs, if it held any
    click.echo(f"{node} drained: it gets no VIP until `hactl undrain {node}`.")


@click.command()
@click.argument("node", shell_complete=complete.nodes)
@_TIMEOUT
@click.pass_context
def undrain(ctx: click.Context, node: str, timeout: float) -> None:
    """Bring a drained NODE back into service."""

    async def body(store: Store) -> Request | None:
        snapshot = await store.read_view()
        intent.require_leader(snapshot, "undrain")
        intent.require_node(snapshot, node, include_drained=True)
        if not _drained(snapshot, node):
            return None
        request = intent.new_request("undrain", time.time(), node=node)
        return await submit_and_wait(store, request, timeout)

    done = run(connection_of(ctx), body)
    if done is None:
        click.echo(f"{node} is not drained.")
        return
    _outcome(done)  # raises Refused if the controller did not do it
    click.echo(f"{node} is back in service.")


def _drained(snapshot: ClusterView, node: str) -> bool:
    return snapshot.settings is not None and node in snapshot.settings.drained
