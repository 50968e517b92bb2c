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


def _names(ctx: click.Context, pick: Callable[[ClusterView], frozenset[str]]) -> list[str]:
    # Group callbacks do not run during completion: rebuild the options from what was parsed.
    params = ctx.find_root().params
    fields = {f.name for f in dataclasses.fields(Options)}
    options = Options(**{k: v for k, v in params.items() if k in fields})
    try:
        connection = resolve(options)
        etcd = dataclasses.replace(connection.etcd, timeout=min(connection.etcd.timeout, DEADLINE))
        view = run(dataclasses.replace(connection, etcd=etcd), Store.read_view)
    except HactlError:
        return []
    return sorted(pick(view))


def nodes(ctx: click.Context, _param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    names = _names(ctx, ClusterView.known_nodes)
    return [CompletionItem(n) for n in names if n.startswith(incomplete)]


def vips(ctx: click.Context, _param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    names = _names(ctx, ClusterView.known_vips)
    return [CompletionItem(v) for v in names if v.startswith(incomplete)]
