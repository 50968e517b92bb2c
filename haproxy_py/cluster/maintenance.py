"""etcd maintenance for the operator: member status, alarms, quota, compaction, defragmentation.

The store's companion, and with it the only place that talks to aetcd. Cluster-wide
calls (member list, alarms, compaction) go through the store's endpoint handling
and error translation. A member's status, quota and defragmentation are asked of
that member itself, at its first client URL, with the store's TLS settings: one
unreachable member is then a row that says so, never a failed command.

    status = await cluster_status(store)     # every member + active alarms
    await compact(store)                     # drop history before the current revision
    await defragment(store, member)          # one member; it answers nothing meanwhile
"""

from __future__ import annotations

import asyncio
import ssl
from typing import TYPE_CHECKING

import aetcd.exceptions as aetcd_errors
from aetcd import rpc

from haproxy_py.cluster.etcdclient import Client, error_text
from haproxy_py.cluster.etcdmembers import Alarm, ClusterStatus, Member, MemberStatus
from haproxy_py.cluster.store import Store, StoreError
from haproxy_py.cluster.storeerrors import connection_failure

if TYPE_CHECKING:
    from haproxy_py.metrics import Registry

ALARM_POLL = 15.0  # seconds between alarm reads of `export_alarms`: one cheap RPC
DEFRAG_TIMEOUT = 120.0  # defragmenting rewrites the whole database: seconds for a big one
ALARMS = {1: "NOSPACE", 2: "CORRUPT"}
# gRPC status -> the aetcd error the store's endpoint handling expects (as aetcd maps them)
GRPC_ERRORS: dict[object, type[aetcd_errors.ClientError]] = {
    rpc.StatusCode.UNAVAILABLE: aetcd_errors.ConnectionFailedError,
    rpc.StatusCode.DEADLINE_EXCEEDED: aetcd_errors.ConnectionTimeoutError,
    rpc.StatusCode.UNAUTHENTICATED: aetcd_errors.UnauthenticatedError,
}


def _host_port(url: str) -> str:
    return url.split("://", 1)[-1].rstrip("/")


async def members(store: Store) -> list[Member]:
    async def op(client: Client) -> list[Member]:
        try:
            listed = [m async for m in client.members()]
        except rpc.AioRpcError as exc:  # the one aetcd call whose gRPC errors it leaves raw
            error = GRPC_ERRORS.get(exc.code(), aetcd_errors.ClientError)
            raise error(exc.details() or str(exc.code())) from exc
        return [
            Member(
                id=int(m.id),
                name=m.name or f"{m.id:x}",
                endpoint=_host_port(m.client_urls[0]) if m.client_urls else None,
                url=m.client_urls[0] if m.client_urls else None,
            )
            for m in listed
        ]

    return await store._call("member list", op)


async def alarms(store: Store, known: list[Member] | None = None) -> list[Alarm]:
    """Active alarms, each named by its member."""

    async def op(client: Client) -> list[tuple[int, int]]:
        return [(int(a.member_id), int(a.alarm_type)) async for a in client.list_alarms()]

    names = {m.id: m.name for m in known or []}
    raw = await store._call("alarm list", op)
    return [
        Alarm(names.get(member_id, f"{member_id:x}"), ALARMS.get(kind, str(kind)))
        for member_id, kind in raw
        if kind != 0
    ]


async def export_alarms(store: Store, registry: Registry) -> None:
    """Keep `<prefix>_etcd_alarm{member, alarm}` at 1 per active alarm (etcd 3.4 exports none).

    Runs until cancelled; while etcd does not answer the last known alarms stay.
    """
    family = registry.gauge("etcd_alarm", "1 for each active etcd alarm (NOSPACE, CORRUPT)")
    while True:
        try:
            active = await alarms(store, await members(store))
        except StoreError:
            active = None
        if active is not None:
            family.values = {(("alarm", a.kind), ("member", a.member)): 1.0 for a in active}
        await asyncio.sleep(ALARM_POLL)


async def disarm(store: Store) -> None:
    """Clear NOSPACE on every member (after compacting and defragmenting made room)."""

    async def op(client: Client) -> None:
        # etcd clears an alarm only when asked by member and kind (member 0 matches none).
        for alarm in [a async for a in client.list_alarms()]:
            request = rpc.AlarmRequest(
                action=rpc.AlarmRequest.DEACTIVATE, memberID=alarm.member_id, alarm=alarm.alarm_type
            )
            try:
                await client.maintenancestub.Alarm(
                    request, timeout=store.config.timeout, metadata=client.metadata
                )
            except rpc.AioRpcError as exc:
                aetcd_errors._handle_exception(exc)  # raises aetcd's own error, which _call names

    await store._call("alarm disarm", op)


async def member_status(store: Store, member: Member) -> MemberStatus:
    """Ask the member itself; an unreachable member gives a row with `error` set."""
    if member.endpoint is None:
        return MemberStatus(member, False, False, error="no client URL (not started yet?)")
    client = Client(member.endpoint, store.credentials, store.config.timeout)
    try:
        await client.connect()
        reply = await client.maintenancestub.Status(
            rpc.StatusRequest(), timeout=store.config.timeout, metadata=client.metadata
        )
    except (rpc.AioRpcError, aetcd_errors.ClientError) as exc:
        detail = (exc.details() if isinstance(exc, rpc.AioRpcError) else error_text(exc)) or ""
        return MemberStatus(member, False, False, error=connection_failure(detail, store.config))
    finally:
        await client.close()
    return MemberStatus(
        member,
        reachable=True,
        leader=reply.leader == member.id,
        version=reply.version,
        db_size=int(reply.dbSize),
        db_in_use=int(reply.dbSizeInUse),
        raft_index=int(reply.raftIndex),
        quota=await quota(store, member),
    )


async def quota(store: Store, member: Member) -> int | None:
    """The member's backend quota as it enforces it (`etcd_server_quota_backend_bytes`)."""
    if member.url is None:
        return None
    return await asyncio.to_thread(_read_quota, f"{member.url.rstrip('/')}/metrics", store)


def _read_quota(url: str, store: Store) -> int | None:
    """Blocking (run in a thread): urllib costs hactl no import time, unlike an HTTP client."""
    import urllib.request

    context: ssl.SSLContext | None = None
    config = store.config
    if config.tls:
        cafile = str(config.cacert) if config.cacert else None
        context = ssl.create_default_context(cafile=cafile)
        if config.cert is not None:
            context.load_cert_chain(str(config.cert), str(config.key) if config.key else None)
    try:
        with urllib.request.urlopen(url, timeout=config.timeout, context=context) as reply:
            text = reply.read().decode(errors="replace")
    except (OSError, ValueError):  # URLError, TLS and timeouts are OSErrors
        return None
    for line in text.splitlines():
        if line.startswith("etcd_server_quota_backend_bytes "):
            return int(float(line.split()[1]))
    return None


async def cluster_status(store: Store) -> ClusterStatus:
    """Every member's own status (asked in parallel) and the cluster's active alarms."""
    listed = await members(store)
    statuses = await asyncio.gather(*(member_status(store, m) for m in listed))
    return ClusterStatus(tuple(statuses), tuple(await alarms(store, listed)))


async def compact(store: Store) -> int:
    """Compact history up to the current revision; returns it. Space returns on defrag."""
    _, revision = await store.get_prefix(store.schema.prefix)

    async def op(client: Client) -> None:
        await client.compact(revision, physical=True)

    try:
        await store._call("compaction", op)
    except StoreError as exc:
        if "required revision has been compacted" not in str(exc):
            raise  # compacting to where it already is is not a failure
    return revision


async def defragment(store: Store, member: Member) -> None:
    """Defragment this one member (it blocks its reads and writes meanwhile)."""
    if member.endpoint is None:
        raise StoreError(f"etcd member {member.name} advertises no client URL")
    client = Client(member.endpoint, store.credentials, DEFRAG_TIMEOUT)
    try:
        await client.defragment()
    except aetcd_errors.ClientError as exc:
        raise StoreError(
            f"defragmenting etcd member {member.name} at {member.endpoint} failed: "
            f"{error_text(exc)}"
        ) from None
    finally:
        await client.close()
