"""The etcd store adapter: with `etcdclient`, `maintenance` and `rbac`, all that imports aetcd.

Every daemon and hactl talk to etcd through `Store`. It hides aetcd and gRPC
behind plain values (`KeyValue`, `Lease`, `WatchEvent`) and the exception tree
of `storeerrors` (StoreError, StoreUnavailable, StoreTlsError, LeaseLost,
RequestTimeout): every gRPC failure is translated here, in our words.

A failed compare in a transaction is not an exception: conditional writes
return False, and the caller re-reads the view and decides again.

Endpoints: calls go to one endpoint at a time. A connection refused moves on
to the next endpoint within the same call; a deadline (a frozen or partitioned
member) fails the call with StoreUnavailable after `timeout` and moves the
next call, and any open watch, to the next endpoint. Every RPC carries the
deadline (`Client(timeout=...)`): without it a call waits out a frozen etcd.

Leases: `keepalive()` raises LeaseLost when etcd answers TTL <= 0, which is
how an expired lease shows itself (no gRPC error). After an etcd restart every
lease has a fresh full TTL again.

TLS files: a client certificate renewed on disk is used from the next
connection on. When a connection fails (as it does once the old certificate
expires or is revoked), the store re-reads the files if they changed and
dials again with the new ones; a connection that works is left alone, as etcd
itself reloads certificates per connection.

Watch: `watch()` re-watches from the last seen revision + 1 after a disconnect
or an endpoint change, so no event is lost while the stream was down. If that
revision was compacted (etcd compacts periodically), it yields one
`WatchEvent(kind="resync")` whose `mod_revision` is the compaction revision C,
and carries on from C itself: the caller re-reads the view (at some revision
S >= C) and then receives every event after C again, those up to S included,
so nothing that happened between the compaction and its re-read is missed.
Callers drop events at or below their snapshot's revision.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import aetcd.exceptions as aetcd_errors
import structlog

from haproxy_py.cluster.config import EtcdConfig
from haproxy_py.cluster.etcdclient import (
    Client,
    build_compare,
    build_op,
    credentials,
    error_text,
    key_value,
    tls_stamp,
)
from haproxy_py.cluster.records import ClusterView, KeyValue
from haproxy_py.cluster.schema import Schema
from haproxy_py.cluster.storeapi import Compare, GuardedWrites, Lease, Op, WatchEvent
from haproxy_py.cluster.storeerrors import (
    LeaseLost,
    StoreError,
    StoreTlsError,
    StoreUnavailable,
    plain_words,
    tls_failure,
    transient,
)

log = structlog.get_logger(__name__)
T = TypeVar("T")
SWITCH_LOG_EVERY = 10.0  # seconds between warnings that the endpoint changed


class Store(GuardedWrites):
    """One cluster's view of etcd. Use as `async with Store(config, cluster) as store:`."""

    def __init__(self, config: EtcdConfig, cluster: str) -> None:
        self.config = config
        self.schema = Schema(cluster)
        self._stamp = tls_stamp(config)
        self.credentials = credentials(config)
        self._clients: dict[int, Client] = {}
        self._current = 0
        self._rotated = asyncio.Event()
        self._switch_logged = -SWITCH_LOG_EVERY

    async def __aenter__(self) -> Store:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            try:
                await client.close()
            except Exception as exc:  # closing must never mask the real outcome
                log.debug("etcd client close failed", error=repr(exc))

    # -- plumbing -----------------------------------------------------------------------------

    @property
    def endpoint(self) -> str:
        """The endpoint the next call goes to."""
        return self.config.endpoints[self._current]

    def _client(self) -> Client:
        index = self._current
        client = self._clients.get(index)
        if client is None:
            client = Client(self.config.endpoints[index], self.credentials, self.config.timeout)
            self._clients[index] = client
        return client

    async def _reload_tls(self) -> bool:
        """After a failed or refused connection: if the TLS files changed, dial with the new
        ones (True)."""
        if not self.config.tls or tls_stamp(self.config) == self._stamp:
            return False
        try:
            fresh = credentials(self.config)
        except StoreError as exc:  # half-written files: try again at the next failure
            log.warning("etcd TLS files changed but cannot be read yet", error=str(exc))
            return False
        self._stamp, self.credentials = tls_stamp(self.config), fresh
        log.info("etcd TLS files changed; reconnecting with them", cert=str(self.config.cert))
        await self.close()
        return True

    def _rotate(self, reason: str) -> None:
        if len(self.config.endpoints) == 1:
            return
        old = self.endpoint
        self._current = (self._current + 1) % len(self.config.endpoints)
        now = time.monotonic()  # while every member is down this runs every call: warn seldom
        quiet, self._switch_logged = now - self._switch_logged < SWITCH_LOG_EVERY, now
        (log.debug if quiet else log.warning)(
            "etcd endpoint switched", old=old, new=self.endpoint, reason=reason
        )
        self._rotated.set()
        self._rotated = asyncio.Event()

    def _unavailable(self, detail: str, tls: str | None = None) -> StoreUnavailable:
        endpoints = ", ".join(self.config.endpoints)
        if tls is not None:
            return StoreTlsError(f"TLS: {tls} (etcd {endpoints})")
        return StoreUnavailable(
            f"etcd unreachable (endpoints {endpoints}; timeout {self.config.timeout:g} s): "
            f"{detail}; check that etcd runs and that the [etcd] endpoints and TLS files are right"
        )

    async def _call(self, what: str, op: Callable[[Client], Awaitable[T]]) -> T:
        """Run `op` on the current endpoint, moving on when an endpoint refuses or stalls."""
        last, tls = "no endpoint tried", None
        for _ in range(len(self.config.endpoints)):
            endpoint = self.endpoint
            try:
                return await op(self._client())
            except aetcd_errors.ConnectionFailedError as exc:
                tls = tls_failure(error_text(exc), self.config)
                last = f"{endpoint}: {tls or plain_words(error_text(exc), self.config)}"
                await self._reload_tls()
                self._rotate(f"{what}: {last}")
            except (aetcd_errors.ConnectionTimeoutError, aetcd_errors.WatchTimeoutError):
                self._rotate(f"{what}: {endpoint} timed out")
                raise self._unavailable(f"{what} timed out at {endpoint}") from None
            except aetcd_errors.UnauthenticatedError as exc:
                if await self._reload_tls():  # refused with the old files: try the new ones
                    return await self._call(what, op)  # (once: the files are current now)
                raise StoreError(
                    f"etcd at {endpoint} refused the client ({error_text(exc)}); "
                    "check the [etcd] cert and key"
                ) from None
            except aetcd_errors.ClientError as exc:
                detail = error_text(exc)
                if "lease not found" in detail:
                    raise LeaseLost(f"{what}: the lease is gone ({detail})") from None
                if transient(detail):
                    raise self._unavailable(f"{what} at {endpoint}: {detail}") from None
                raise StoreError(f"etcd {what} failed at {endpoint}: {detail}") from None
        raise self._unavailable(last, tls)

    # -- keys ---------------------------------------------------------------------------------

    async def get(self, key: str) -> KeyValue | None:
        async def op(client: Client) -> KeyValue | None:
            result = await client.get(key.encode())
            return None if result is None else key_value(result)

        return await self._call("get", op)

    async def get_prefix(self, prefix: str) -> tuple[list[KeyValue], int]:
        """All keys under `prefix` and the revision they were read at (one range request)."""

        async def op(client: Client) -> tuple[list[KeyValue], int]:
            result = await client.get_prefix(prefix.encode())
            return [key_value(kv) for kv in result], result.header.revision

        return await self._call("get_prefix", op)

    async def read_view(self) -> ClusterView:
        """The whole cluster as one consistent snapshot (see `ClusterView`), in one range
        request that leaves `announce/` out (`Schema.view_range`)."""
        start, end = self.schema.view_range()

        async def op(client: Client) -> tuple[list[KeyValue], int]:
            result = await client.get_range(start.encode(), end.encode())
            return [key_value(kv) for kv in result], result.header.revision

        kvs, revision = await self._call("get_range", op)
        return ClusterView.from_kvs(self.schema, kvs, revision)

    async def put(self, key: str, value: bytes, lease: int = 0) -> int:
        """Unconditional write; returns the new revision. LeaseLost if `lease` is gone."""

        async def op(client: Client) -> int:
            result = await client.put(key.encode(), value, lease=lease or None)
            return int(result.header.revision)

        return await self._call("put", op)

    async def delete(self, key: str) -> bool:
        """Unconditional delete; True if the key existed."""

        async def op(client: Client) -> bool:
            return await client.delete(key.encode()) is not None

        return await self._call("delete", op)

    async def txn(
        self, compares: Sequence[Compare], success: Sequence[Op], failure: Sequence[Op] = ()
    ) -> bool:
        """One etcd transaction; True when every compare held (and `success` ran)."""

        async def op(client: Client) -> bool:
            t = client.transactions
            built = [build_compare(t, compare) for compare in compares]
            succeeded, _ = await client.transaction(
                compare=built,
                success=[build_op(t, item) for item in success],
                failure=[build_op(t, item) for item in failure],
            )
            return bool(succeeded)

        return await self._call("transaction", op)

    # -- leases -------------------------------------------------------------------------------

    async def grant_lease(self, ttl: int) -> Lease:
        async def op(client: Client) -> Lease:
            lease = await client.lease(ttl)
            return Lease(id=int(lease.id), ttl=int(lease.ttl))

        return await self._call("lease grant", op)

    async def keepalive(self, lease_id: int) -> int:
        """Refresh the lease; returns the TTL etcd reset it to. LeaseLost when TTL <= 0."""

        async def op(client: Client) -> int:
            reply = await client.refresh_lease(lease_id)
            return int(reply.TTL) if reply is not None else 0

        ttl = await self._call("lease keepalive", op)
        if ttl <= 0:
            raise LeaseLost(f"lease {lease_id:x} expired (keepalive answered TTL {ttl})")
        return ttl

    async def lease_remaining(self, lease_id: int) -> int:
        """Seconds left on the lease as etcd sees it; -1 when it no longer exists."""

        async def op(client: Client) -> int:
            info = await client.get_lease_info(lease_id, keys=False)
            return int(info.TTL)

        return await self._call("lease time-to-live", op)

    async def lease_time_to_live(self, lease_id: int) -> tuple[int, int]:
        """(seconds left, truncated; granted TTL) as etcd's leader sees it; left -1: gone."""

        async def op(client: Client) -> tuple[int, int]:
            info = await client.get_lease_info(lease_id, keys=False)
            return int(info.TTL), int(info.grantedTTL)

        return await self._call("lease time-to-live", op)

    async def revoke(self, lease_id: int) -> None:
        """Revoke the lease, deleting its keys at once; a lease already gone is fine."""

        async def op(client: Client) -> None:
            await client.revoke_lease(lease_id)

        with contextlib.suppress(LeaseLost):
            await self._call("lease revoke", op)

    # -- watch --------------------------------------------------------------------------------

    async def watch(self, prefix: str, start_revision: int) -> AsyncGenerator[WatchEvent, None]:
        """Every change under `prefix` from `start_revision` on, surviving disconnects.

        Never ends by itself; cancel the consuming task (or break) to stop. While
        no endpoint is reachable it retries with a capped backoff and logs once.
        """
        next_revision = start_revision
        backoff = 0.05
        down_logged = False
        while True:
            rotated = self._rotated
            try:
                stream = await self._call("watch", _watch_from(prefix, next_revision))
            except StoreError as exc:
                if not down_logged:
                    log.warning("etcd watch down, retrying", prefix=prefix, error=str(exc))
                    down_logged = True
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 1.0)
                continue
            if _cancel_dropped():
                if not isinstance(stream, _Compacted):
                    await _cancel_quietly(stream)
                raise asyncio.CancelledError
            if isinstance(stream, _Compacted):
                next_revision = stream.revision
                yield _resync(prefix, next_revision, start=True)
                continue
            if down_logged:
                log.info("etcd watch restored", prefix=prefix, from_revision=next_revision)
                down_logged = False
            backoff = 0.05
            try:
                async for event in _until_rotated(stream, rotated):
                    kv = key_value(event.kv)
                    next_revision = kv.mod_revision + 1
                    kind: Literal["put", "delete"] = "put" if event.kind == "PUT" else "delete"
                    yield WatchEvent(kind, kv.key, kv.value, kv.mod_revision, kv.lease)
            except aetcd_errors.RevisionCompactedError as exc:
                next_revision = int(exc.compacted_revision)
                yield _resync(prefix, next_revision, start=False)
            except aetcd_errors.ClientError as exc:
                log.info("etcd watch interrupted", prefix=prefix, error=error_text(exc))
            finally:
                await _cancel_quietly(stream)


@dataclass(frozen=True)
class _Compacted:
    """A watch could not start: history before `revision` is compacted away."""

    revision: int


def _watch_from(prefix: str, revision: int) -> Callable[[Client], Awaitable[Any]]:
    async def op(client: Client) -> Any:
        try:
            return await client.watch_prefix(prefix.encode(), start_revision=revision)
        except aetcd_errors.RevisionCompactedError as exc:
            return _Compacted(int(exc.compacted_revision))

    return op


def _resync(prefix: str, compacted: int, start: bool) -> WatchEvent:
    log.warning(
        "etcd watch behind compacted history; callers re-read",
        prefix=prefix,
        compacted_revision=compacted,
        when="re-watch" if start else "streaming",
    )
    return WatchEvent("resync", prefix, b"", compacted)


async def _until_rotated(stream: Any, rotated: asyncio.Event) -> AsyncIterator[Any]:
    """The stream's events, ending early when the store switches endpoint."""
    iterator = aiter(stream)
    rotation = asyncio.ensure_future(rotated.wait())
    item: asyncio.Future[Any] | None = None
    try:
        while True:
            item = asyncio.ensure_future(anext(iterator))
            done, _ = await asyncio.wait({item, rotation}, return_when=asyncio.FIRST_COMPLETED)
            if item not in done:
                return
            try:
                value = item.result()
            except StopAsyncIteration:
                return
            item = None
            yield value
    finally:
        rotation.cancel()
        if item is not None and not item.done():
            item.cancel()
        if item is not None:
            # Nobody awaits it any more: fetch its outcome so asyncio does not report it.
            item.add_done_callback(_discard_outcome)


def _discard_outcome(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


def _cancel_dropped() -> bool:
    """Whether this task was cancelled and a callee dropped the cancel: aetcd waits for a
    watch's creation with `asyncio.wait_for`, which on Python 3.11 returns the result and
    drops a cancel that comes as the creation completes. Watching on would never end."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


async def _cancel_quietly(stream: Any) -> None:
    try:
        await stream.cancel()
    except Exception as exc:  # the stream may already be dead; nothing to clean up then
        log.debug("watch cancel failed", error=repr(exc))
