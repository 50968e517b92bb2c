"""hactl's I/O edge: one Store per command, store errors turned into hactl's exit codes.

A TLS handshake failure reaches us as an unreachable endpoint (gRPC reports
it as UNAVAILABLE, like a dead server); `diagnose` reads gRPC's detail text to
say which side's certificate failed which check.
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
from haproxy_py.cluster.store import RequestTimeout, Store, StoreError, StoreUnavailable
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
    except StoreUnavailable as exc:
        raise Unreachable(diagnose(str(exc), connection.etcd)) from None
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
    stored = await store.submit(request)
    try:
        return await store.wait_result(request.id, wait)
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


def diagnose(message: str, etcd: EtcdConfig) -> str:
    """Name the TLS cause when gRPC's detail shows one; otherwise the store's message as is."""
    where = f"etcd {', '.join(etcd.endpoints)}"
    for marker in ("CERTIFICATE_VERIFY_FAILED", "not in peer certificate"):
        if marker in message:
            return (
                f"TLS: etcd's server certificate failed verification against --cacert "
                f"{etcd.cacert}: wrong CA file, or the endpoint's name/IP is not in its SANs "
                f"({where}; {marker})"
            )
    for marker in ("BAD_CERTIFICATE", "TSI_DATA_CORRUPTED"):
        if marker in message:
            if etcd.cert is None:
                what = "etcd requires a client certificate and none was given (--cert/--key)"
            else:
                what = (
                    f"etcd rejected client certificate {etcd.cert} "
                    "(not signed by a CA etcd trusts, or not for client use)"
                )
            return f"TLS: {what} ({where}; {marker})"
    if not etcd.tls and "Socket closed" in message:
        return f"{message}; etcd may require TLS: give https:// endpoints and --cacert"
    return message


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
