"""Shell completion of node names and VIPs, read from etcd while the operator types.

Completion must never print an error into the shell or hang it: any failure
(no etcd, bad options, TLS) completes nothing, and etcd gets a short deadline.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import click
from click.shell_completion import CompletionItem

from haproxy_py.cluster.records import ClusterView
from haproxy_py.cluster.store import Store
from haproxy_py.hactl.connection import Options, resolve
from haproxy_py.hactl.errors import HactlError
from haproxy_py.hactl.session import run

DEADLINE = 0.5  # seconds per etcd call while completing


def _names(ctx: click.Context, pick: Callable[[ClusterView], set[str]]) -> list[str]:
    # Group callbacks do not run during completion: rebuild the options from what was parsed.
    params = ctx.find_root().params
    fields = {f.name for f in dataclasses.fields(Options)}
    options = Options(**{k: v for k, v in params.items() if k in fields})
    try:
        connection = resolve(options)
        etcd = dataclasses.replace(connection.etcd, timeout=min(connection.etcd.timeout, DEADLINE))
        connection = dataclasses.replace(connection, etcd=etcd)

        async def body(store: Store) -> ClusterView:
            return await store.read_view()

        view = run(connection, body)
    except HactlError:
        return []
    return sorted(pick(view))


def _nodes(view: ClusterView) -> set[str]:
    drained = set(view.settings.drained) if view.settings else set()
    return set(view.nodes) | drained


def _vips(view: ClusterView) -> set[str]:
    configured = set(view.settings.vips) if view.settings else set()
    return configured | set(view.occupied)


def nodes(ctx: click.Context, _param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    return [CompletionItem(n) for n in _names(ctx, _nodes) if n.startswith(incomplete)]


def vips(ctx: click.Context, _param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    return [CompletionItem(v) for v in _names(ctx, _vips) if v.startswith(incomplete)]
