"""What the daemons need from a store: the etcd key-value contract, as a Protocol.

With it, the plain values the contract speaks in (`Lease`, `WatchEvent`, the
transaction parts `Compare`, `Put`, `Delete`) and `GuardedWrites`, the
conditional single-key writes every store builds on its `txn`.

Two implementations keep it: `store.Store` (etcd through aetcd) and
`memstore.MemoryStore` (one process, an injected clock). The contract tests
in `tests/integration/cluster/test_store_contract.py` run against both, so
code written against `KVStore` behaves the same on either.

The contract, in etcd's terms: every write that changes something advances
one cluster-wide revision (a transaction is one revision, however many keys
it touches); conditional writes answer False instead of raising; a key put
under a lease dies with it; `keepalive` raises `LeaseLost` once the lease is
gone; `watch` yields every change from a revision on, and one `resync` event
when that history was compacted (see `store` for the details). Failures are
`StoreError`s and never carry a client library's types.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from haproxy_py.cluster.records import ClusterView, KeyValue
from haproxy_py.cluster.schema import Schema


@dataclass(frozen=True)
class Lease:
    """A granted lease: `ttl` is what etcd granted (it may round up)."""

    id: int
    ttl: int


@dataclass(frozen=True)
class WatchEvent:
    """One change under a watched prefix; `resync` means "re-read everything"."""

    kind: Literal["put", "delete", "resync"]
    key: str
    value: bytes
    mod_revision: int
    lease: int = 0


# Transaction building blocks: plain values, translated to aetcd in `txn()`.
@dataclass(frozen=True)
class Compare:
    """`target` of `key` compared with `value`; etcd treats an absent key's revisions as 0."""

    key: str
    target: Literal["value", "mod", "create", "version"]
    op: Literal["==", "!=", "<", ">"]
    value: int | bytes


def absent(key: str) -> Compare:
    return Compare(key, "create", "==", 0)


def mod_revision_is(key: str, revision: int) -> Compare:
    return Compare(key, "mod", "==", revision)


def created_at(key: str, revision: int) -> Compare:
    return Compare(key, "create", "==", revision)


def value_is(key: str, value: bytes) -> Compare:
    return Compare(key, "value", "==", value)


@dataclass(frozen=True)
class Put:
    key: str
    value: bytes
    lease: int = 0


@dataclass(frozen=True)
class Delete:
    key: str


Op = Put | Delete


class GuardedWrites:
    """The guarded single-key writes, built on `txn`: one copy for every store."""

    async def txn(
        self, compares: Sequence[Compare], success: Sequence[Op], failure: Sequence[Op] = ()
    ) -> bool:
        raise NotImplementedError

    async def create(self, key: str, value: bytes, lease: int = 0) -> bool:
        """Write `key` only if it does not exist; False if it does."""
        return await self.txn([absent(key)], [Put(key, value, lease)])

    async def replace(self, key: str, value: bytes, mod_revision: int, lease: int = 0) -> bool:
        """Overwrite `key` only if nobody changed it since `mod_revision`."""
        return await self.txn([mod_revision_is(key, mod_revision)], [Put(key, value, lease)])

    async def delete_if(self, key: str, mod_revision: int) -> bool:
        """Delete `key` only if nobody changed it since `mod_revision`."""
        return await self.txn([mod_revision_is(key, mod_revision)], [Delete(key)])


class KVStore(Protocol):
    """The operations the controller and the agent run; `Store` and `MemoryStore` have them."""

    @property
    def schema(self) -> Schema: ...

    async def close(self) -> None: ...

    async def get(self, key: str) -> KeyValue | None: ...

    async def get_prefix(self, prefix: str) -> tuple[list[KeyValue], int]: ...

    async def read_view(self) -> ClusterView: ...

    async def put(self, key: str, value: bytes, lease: int = 0) -> int: ...

    async def delete(self, key: str) -> bool: ...

    async def txn(
        self, compares: Sequence[Compare], success: Sequence[Op], failure: Sequence[Op] = ()
    ) -> bool: ...

    async def create(self, key: str, value: bytes, lease: int = 0) -> bool: ...

    async def replace(self, key: str, value: bytes, mod_revision: int, lease: int = 0) -> bool: ...

    async def delete_if(self, key: str, mod_revision: int) -> bool: ...

    async def grant_lease(self, ttl: int) -> Lease: ...

    async def keepalive(self, lease_id: int) -> int: ...

    async def lease_remaining(self, lease_id: int) -> int: ...

    async def lease_time_to_live(self, lease_id: int) -> tuple[int, int]: ...

    async def revoke(self, lease_id: int) -> None: ...

    def watch(self, prefix: str, start_revision: int) -> AsyncGenerator[WatchEvent, None]: ...
