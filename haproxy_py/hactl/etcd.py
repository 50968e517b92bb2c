"""`hactl etcd compact|defrag|disarm|auth`: etcd maintenance, and its users and roles.

etcd compacts itself periodically and the Ansible role defragments each member
on its own weekly slot; these are for the day `hactl status` warns that the
database nears its quota, or shows the NOSPACE alarm: compact, defragment,
then disarm. Defragmenting blocks a member's reads and writes while it runs,
so members are done one at a time, followers first, the leader last.

`auth` (run with the root identity, on the control machine) creates the
cluster's users and roles from haproxy_py.cluster.rbac and turns auth on;
defragmenting then also needs root (or a member's own certificate).
"""

from __future__ import annotations

import time

import click

from haproxy_py.cluster import maintenance, rbac
from haproxy_py.cluster.store import Store
from haproxy_py.hactl.connection import connection_of
from haproxy_py.hactl.errors import ConfigProblem, NotFound
from haproxy_py.hactl.etcdview import size
from haproxy_py.hactl.session import run


@click.group()
def etcd() -> None:
    """Maintain etcd: compact, defragment, clear the NOSPACE alarm; users and roles."""


@etcd.command()
@click.pass_context
def compact(ctx: click.Context) -> None:
    """Drop history older than the current revision (space returns on defrag)."""
    revision = run(connection_of(ctx), maintenance.compact)
    click.echo(
        f"compacted etcd history up to revision {revision}; `hactl etcd defrag` frees the space"
    )


@etcd.command()
@click.option("--member", metavar="NAME", help="Only this member (default: each, one at a time).")
@click.pass_context
def defrag(ctx: click.Context, member: str | None) -> None:
    """Defragment members one at a time, followers first, the leader last."""

    async def body(store: Store) -> None:
        status = await maintenance.cluster_status(store)
        chosen = sorted(status.members, key=lambda s: (s.leader, s.member.name))
        if member is not None:
            chosen = [s for s in chosen if s.member.name == member]
            if not chosen:
                known = ", ".join(sorted(s.member.name for s in status.members))
                raise NotFound(f"no etcd member named {member!r} (members: {known})")
        for before in chosen:
            started = time.monotonic()
            await maintenance.defragment(store, before.member)
            after = await maintenance.member_status(store, before.member)
            click.echo(
                f"defragmented {before.member.name} ({before.member.endpoint}): "
                f"{size(before.db_size)} -> {size(after.db_size)} "
                f"in {time.monotonic() - started:.2f} s"
            )

    run(connection_of(ctx), body)


@etcd.command()
@click.pass_context
def disarm(ctx: click.Context) -> None:
    """Clear the NOSPACE alarm once compact and defrag have made room."""
    run(connection_of(ctx), maintenance.disarm)
    click.echo("etcd alarms cleared; writes are accepted again")


@etcd.command()
@click.option(
    "--node",
    "nodes",
    multiple=True,
    metavar="NAME",
    help="A proxy node (agent-NAME, controller-NAME).",
)
@click.option("--operator", "operators", multiple=True, metavar="NAME", help="operator-NAME.")
@click.option(
    "--admin",
    "admins",
    multiple=True,
    metavar="USER",
    help="Another root user: an etcd member's certificate name (its defragmentation timer).",
)
@click.pass_context
def auth(
    ctx: click.Context, nodes: tuple[str, ...], operators: tuple[str, ...], admins: tuple[str, ...]
) -> None:
    """Create this cluster's etcd users and roles, then enable auth (needs the root identity).

    Idempotent: run it again after adding a node or an operator; permissions
    that were added to these roles by hand are taken away.
    """
    connection = connection_of(ctx)
    try:
        desired = rbac.plan(connection.cluster, nodes, operators, admins)
    except rbac.RbacError as exc:
        raise ConfigProblem(str(exc)) from None
    changes = run(connection, lambda store: rbac.apply(store, desired))
    for change in changes:
        click.echo(change)
    summary = f"{len(desired.users)} users, {len(desired.roles)} roles"
    click.echo(f"etcd auth enabled; {summary}: {len(changes) or 'no'} changes")
