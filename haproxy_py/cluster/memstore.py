"""An in-memory store with etcd's semantics: fast tests and control-plane benchmarks.

`MemoryStore` keeps the `storeapi.KVStore` contract in one process: one
revision counter, compare-and-set transactions, leases, watches from any
revision still in the history, and compaction. Time comes from the injected
`clock` (monotonic seconds), so a test advances a fake clock where it would
otherwise sleep out a lease.

Leases expire when the clock passes their deadline, noticed at the start of
every operation and by `sweep()` (etcd's leader sweeps every 500 ms; here the
next caller does it, so an idle store with no caller keeps expired leases).
TTLs read back truncated to whole seconds, as etcd answers them. The history
is kept until `compact()`: a long run compacts now and then, as etcd does.

`down = True` makes every call fail with `StoreUnavailable`, as an unreachable
etcd does; watches wait until it is lifted and carry on without losing events.
"""

from __future__ import annotations

import asyncio
import bisect
import itertools
import operator
import time
from collections.abc import AsyncGenerator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from haproxy_py.cluster.records import ClusterView, KeyValue
from haproxy_py.cluster.schema import Schema
from haproxy_py.cluster.storeapi import Compare, Delete, GuardedWrites, Lease, Op, Put, WatchEvent
from haproxy_py.cluster.storeerrors import LeaseLost, StoreUnavailable


@dataclass
class _Lease:
    ttl: int
    deadline: float
    keys: set[str] = field(default_factory=set)


class MemoryStore(GuardedWrites):
    """One cluster's keys in a dict; several `MemoryStore`s may share one `MemoryData`."""

    def __init__(
        self,
        cluster: str = "test",
        clock: Callable[[], float] = time.monotonic,
        data: MemoryData | None = None,
    ) -> None:
        self.schema = Schema(cluster)
        self.data = data or MemoryData(clock)

    async def __aenter__(self) -> MemoryStore:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        pass

    async def _ready(self) -> MemoryData:
        """The data, after a turn of the event loop (every call is a suspension point, as a
        network round trip is, so concurrent callers interleave and race), after checking it
        can be reached and sweeping expired leases."""
        await asyncio.sleep(0)
        if self.data.down:
            raise StoreUnavailable("etcd unreachable (in-memory store set down)")
        self.data.sweep()
        return self.data

    # -- keys ---------------------------------------------------------------------------------

    async def get(self, key: str) -> KeyValue | None:
        return (await self._ready()).keys.get(key)

    async def get_prefix(self, prefix: str) -> tuple[list[KeyValue], int]:
        data = await self._ready()
        found = [kv for key, kv in sorted(data.keys.items()) if key.startswith(prefix)]
        return found, data.revision

    async def read_view(self) -> ClusterView:
        kvs, revision = await self.get_prefix(self.schema.prefix)
        return ClusterView.from_kvs(self.schema, kvs, revision)

    async def put(self, key: str, value: bytes, lease: int = 0) -> int:
        data = await self._ready()
        data.apply([Put(key, value, lease)])
        return data.revision

    async def delete(self, key: str) -> bool:
        data = await self._ready()
        existed = key in data.keys
        data.apply([Delete(key)])
        return existed

    async def txn(
        self, compares: Sequence[Compare], success: Sequence[Op], failure: Sequence[Op] = ()
    ) -> bool:
        data = await self._ready()
        held = all(data.holds(compare) for compare in compares)
        data.apply(success if held else failure)
        return held

    # -- leases -------------------------------------------------------------------------------

    async def grant_lease(self, ttl: int) -> Lease:
        data = await self._ready()
        lease_id = next(data.lease_ids)
        data.leases[lease_id] = _Lease(ttl, data.clock() + ttl)
        return Lease(lease_id, ttl)

    async def keepalive(self, lease_id: int) -> int:
        data = await self._ready()
        lease = data.leases.get(lease_id)
        if lease is None:
            raise LeaseLost(f"lease {lease_id:x} expired (keepalive answered TTL 0)")
        lease.deadline = data.clock() + lease.ttl
        return lease.ttl

    async def lease_remaining(self, lease_id: int) -> int:
        return (await self.lease_time_to_live(lease_id))[0]

    async def lease_time_to_live(self, lease_id: int) -> tuple[int, int]:
        data = await self._ready()
        lease = data.leases.get(lease_id)
        if lease is None:
            return -1, 0
        return int(lease.deadline - data.clock()), lease.ttl

    async def revoke(self, lease_id: int) -> None:
        (await self._ready()).end_lease(lease_id)

    def compact(self, revision: int) -> None:
        """Forget the history before `revision`, as etcd's compaction does."""
        self.data.compact(revision)

    # -- watch --------------------------------------------------------------------------------

    async def watch(self, prefix: str, start_revision: int) -> AsyncGenerator[WatchEvent, None]:
        """Every change under `prefix` from `start_revision` on; never ends by itself."""
        data = self.data
        next_revision = start_revision
        while True:
            changed = data.changed
            if not data.down:
                if 0 < next_revision < data.compacted:
                    next_revision = data.compacted
                    yield WatchEvent("resync", prefix, b"", next_revision)
                    continue
                for event in data.events_from(next_revision):
                    next_revision = event.mod_revision + 1
                    if event.key.startswith(prefix):
                        yield event
                next_revision = max(next_revision, data.revision + 1)
            await changed.wait()


class MemoryData:
    """The keys, leases and history behind one or more `MemoryStore`s (one "etcd cluster")."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.revision = 1  # etcd starts at 1 too
        self.compacted = 0
        self.keys: dict[str, KeyValue] = {}
        self.versions: dict[str, int] = {}  # writes since creation (etcd's `version`)
        self.history: list[WatchEvent] = []
        self.leases: dict[int, _Lease] = {}
        self.lease_ids = itertools.count(0x1000)
        self.changed = asyncio.Event()
        self._down = False

    @property
    def down(self) -> bool:
        return self._down

    @down.setter
    def down(self, value: bool) -> None:
        self._down = value
        self._notify()

    def holds(self, compare: Compare) -> bool:
        kv = self.keys.get(compare.key)
        actual: int | bytes
        if compare.target == "value":
            actual = kv.value if kv else b""
        elif compare.target == "mod":
            actual = kv.mod_revision if kv else 0
        elif compare.target == "create":
            actual = kv.create_revision if kv else 0
        else:
            actual = self.versions.get(compare.key, 0)
        if type(actual) is not type(compare.value):
            return False
        return bool(_OPERATORS[compare.op](actual, compare.value))

    def apply(self, ops: Sequence[Op]) -> None:
        """Run `ops` as one revision; a lease that is gone fails the whole of it first."""
        for op in ops:
            if isinstance(op, Put) and op.lease and op.lease not in self.leases:
                raise LeaseLost(f"lease {op.lease:x} not found (requested lease not found)")
        events = []
        revision = self.revision + 1
        for op in ops:
            old = self.keys.get(op.key)
            if old is not None and old.lease in self.leases:
                self.leases[old.lease].keys.discard(op.key)
            if isinstance(op, Put):
                created = old.create_revision if old else revision
                kv = KeyValue(op.key, op.value, created, revision, op.lease)
                self.keys[op.key] = kv
                self.versions[op.key] = self.versions.get(op.key, 0) + 1
                if op.lease:
                    self.leases[op.lease].keys.add(op.key)
                events.append(WatchEvent("put", op.key, op.value, revision, op.lease))
            elif old is not None:
                del self.keys[op.key], self.versions[op.key]
                events.append(WatchEvent("delete", op.key, b"", revision))
        if events:
            self.revision = revision
            self.history.extend(events)
            self._notify()

    def end_lease(self, lease_id: int) -> None:
        lease = self.leases.pop(lease_id, None)
        if lease is not None:
            self.apply([Delete(key) for key in sorted(lease.keys)])

    def sweep(self) -> None:
        """End every lease whose deadline has passed (etcd's lessor does this every 500 ms)."""
        now = self.clock()
        for lease_id in [i for i, lease in self.leases.items() if lease.deadline <= now]:
            self.end_lease(lease_id)

    def compact(self, revision: int) -> None:
        self.compacted = max(self.compacted, min(revision, self.revision))
        self.history = [e for e in self.history if e.mod_revision >= self.compacted]
        self._notify()

    def events_from(self, revision: int) -> list[WatchEvent]:
        return self.history[bisect.bisect_left(self.history, revision, key=_revision) :]

    def _notify(self) -> None:
        self.changed.set()
        self.changed = asyncio.Event()


def _revision(event: WatchEvent) -> int:
    return event.mod_revision


_OPERATORS: dict[str, Callable[[Any, Any], bool]] = {
    "==": operator.eq,
    "!=": operator.ne,
    "<": operator.lt,
    ">": operator.gt,
}
