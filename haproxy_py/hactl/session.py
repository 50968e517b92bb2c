"""hactl's I/O edge: one Store per command, store errors turned into hactl's exit codes.

The store's messages are complete (a TLS failure already names whose
certificate failed which check), so they are shown as they are.
"""

from __future__ import annotations

import asyncio
import getpass
import socket
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import TypeVar

from haproxy_py.cluster.config import EtcdConfig
from haproxy_py.cluster.records import ClusterView, Request
from haproxy_py.cluster.requestflow import submit, wait_result
from haproxy_py.cluster.store import Store, StoreError
from haproxy_py.cluster.storeerrors import RequestTimeout
from haproxy_py.hactl import intent
from haproxy_py.hactl.connection import Connection
from haproxy_py.hactl.errors import TimedOut, Unreachable

T = TypeVar("T")


def run(connection: Connection, body: Callable[[Store], Awaitable[T]]) -> T:
    """Run `body` with a connected store; every store failure becomes one hactl error."""

    async def main() -> T:
        async with Store(connection.etcd, connection.cluster) as store:
            return await body(store)

    try:
        return asyncio.run(main())
    except StoreError as exc:
        raise Unreachable(str(exc)) from None


async def lease_left(store: Store, view: ClusterView) -> dict[str, float | None]:
    """Seconds left on each node's lease (None when etcd no longer knows the lease)."""
    leases = {name: record.lease for name, record in view.nodes.items() if record.lease}
    remaining = await asyncio.gather(*(store.lease_remaining(lid) for lid in leases.values()))
    return {
        name: float(ttl) if ttl >= 0 else None for name, ttl in zip(leases, remaining, strict=True)
    }


async def submit_and_wait(store: Store, request: Request, wait: float) -> Request:
    """Write the request and wait for its final result.

    On timeout a request the controller never picked up is withdrawn (deleted if
    still unchanged), so that it cannot surprise anyone by running later.
    """
    request = replace(request, by=intent.requester(_identity(store.config), *_local_account()))
    stored = await submit(store, request)
    try:
        return await wait_result(store, request.id, wait)
    except RequestTimeout as exc:
        last = exc.last or stored
        if last.result is None:
            key = store.schema.request(request.id)
            withdrawn = await store.delete_if(key, last.mod_revision)
            state = "withdrawn" if withdrawn else "left in place"
            raise TimedOut(
                f"no controller picked up the {request.kind} request {request.id} within "
                f"{wait:g} s; request {state} (see `hactl status` for the controller)"
            ) from None
        raise TimedOut(
            f"{request.kind} request {request.id} still {last.result.status} after {wait:g} s: "
            f"{last.result.message or 'no message'}; the controller carries on with it"
        ) from None


def _identity(etcd: EtcdConfig) -> str | None:
    """The common name of our client certificate: the etcd user the request is written as."""
    if etcd.cert is None:
        return None
    from cryptography.x509.oid import NameOID  # only worth loading when there is TLS

    from haproxy_py import pki

    try:
        names = pki.load_cert(etcd.cert).subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    except pki.PkiError:
        return None
    return str(names[0].value) if names else None


def _local_account() -> tuple[str, str]:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return user, socket.gethostname()
