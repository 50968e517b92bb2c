"""The store contract (`storeapi.KVStore`), run against a real etcd and the in-memory store.

Each test gets a `world`: a way to open stores on one shared backend, to let
time pass (the etcd side sleeps; the memory side advances its clock) and to
compact. A behaviour pinned here holds on both, which is what lets the
controller's fast tests (`tests/unit/controller/test_racing.py`) stand in for
runs against etcd.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Protocol

import pytest

from haproxy_py.cluster import maintenance
from haproxy_py.cluster.memstore import MemoryData, MemoryStore
from haproxy_py.cluster.records import NodeRecord
from haproxy_py.cluster.store import LeaseLost, Store
from haproxy_py.cluster.storeapi import Delete, KVStore, Put, WatchEvent, absent, value_is
from tests.integration.cluster.helpers import etcd_config
from tests.support.clock import ManualClock
from tests.support.etcd import EtcdCluster
from tests.support.wait import eventually_async


class World(Protocol):
    def store(self, cluster: str = "c") -> contextlib.AbstractAsyncContextManager[KVStore]: ...

    async def pass_time(self, seconds: float) -> None: ...

    async def compact(self, store: KVStore) -> int: ...


@dataclass
class MemoryWorld:
    clock: ManualClock
    data: MemoryData

    @contextlib.asynccontextmanager
    async def store(self, cluster: str = "c") -> AsyncIterator[KVStore]:
        yield MemoryStore(cluster, data=self.data)

    async def pass_time(self, seconds: float) -> None:
        self.clock.advance(seconds)

    async def compact(self, store: KVStore) -> int:
        _, revision = await store.get_prefix(store.schema.prefix)
        self.data.compact(revision)
        return revision


@dataclass
class EtcdWorld:
    etcd: EtcdCluster

    @contextlib.asynccontextmanager
    async def store(self, cluster: str = "c") -> AsyncIterator[KVStore]:
        async with Store(etcd_config(self.etcd.endpoints), cluster) as store:
            yield store

    async def pass_time(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    async def compact(self, store: KVStore) -> int:
        assert isinstance(store, Store)
        return await maintenance.compact(store)


@pytest.fixture(params=["memory", "etcd"])
def world(request: pytest.FixtureRequest) -> Iterator[World]:
    if request.param == "memory":
        clock = ManualClock()
        yield MemoryWorld(clock, MemoryData(clock))
        return
    with EtcdCluster.start(size=1) as etcd:
        yield EtcdWorld(etcd)


async def collect(store: KVStore, prefix: str, revision: int, sink: list[WatchEvent]) -> None:
    async for event in store.watch(prefix, revision):
        sink.append(event)


class TestKeys:
    async def test_create_if_absent_and_compare_on_revision(self, world: World) -> None:
        """Conditional writes succeed once and then report False instead of overwriting."""
        async with world.store() as store:
            key = store.schema.config
            assert await store.create(key, b"one")
            assert not await store.create(key, b"two")
            kv = await store.get(key)
            assert kv is not None and kv.value == b"one"
            assert await store.replace(key, b"three", kv.mod_revision)
            assert not await store.replace(key, b"four", kv.mod_revision)
            assert not await store.delete_if(key, kv.mod_revision)
            current = await store.get(key)
            assert current is not None and current.value == b"three"
            assert current.create_revision == kv.create_revision
            assert await store.delete_if(key, current.mod_revision)
            assert await store.get(key) is None
            assert await store.txn([absent(key)], [Put(key, b"x")])

    async def test_a_transaction_is_one_revision_and_runs_one_branch(self, world: World) -> None:
        async with world.store() as store:
            a, b = store.schema.node("a"), store.schema.node("b")
            first = await store.put(a, b"1")
            assert await store.txn([value_is(a, b"1")], [Put(a, b"2"), Put(b, b"2")])
            kvs, revision = await store.get_prefix(store.schema.prefix)
            assert revision == first + 1
            assert [(kv.key, kv.value, kv.mod_revision) for kv in kvs] == [
                (a, b"2", revision),
                (b, b"2", revision),
            ]
            assert not await store.txn([value_is(a, b"1")], [Delete(a)], [Delete(b)])
            assert await store.get(a) is not None and await store.get(b) is None
            assert not await store.delete(b)
            assert (await store.get_prefix(store.schema.prefix))[1] == revision + 1

    async def test_view_reads_everything_at_one_revision_and_tolerates_junk(
        self, world: World
    ) -> None:
        async with world.store() as store:
            s = store.schema
            await store.put(s.node("n1"), NodeRecord("n1", priority=7, healthy=True).to_json())
            await store.put(s.node("bad"), b"not json")
            await store.put(s.vip("198.18.0.9"), b"[]")
            revision = await store.put(s.epoch, b"12")
            view = await store.read_view()
            assert view.revision == revision
            assert view.nodes["n1"].priority == 7 and "bad" not in view.nodes
            assert "198.18.0.9" in view.occupied and "198.18.0.9" not in view.vips
            assert view.epoch == 12
            assert len(view.problems) == 2

    async def test_other_clusters_are_invisible(self, world: World) -> None:
        async with world.store("a") as a, world.store("ab") as ab:
            await ab.put(ab.schema.node("x"), NodeRecord("x").to_json())
            assert (await a.read_view()).nodes == {}


class TestLeases:
    async def test_lease_expiry_removes_keys_and_keepalive_then_raises(self, world: World) -> None:
        async with world.store() as store:
            lease = await store.grant_lease(1)
            assert lease.ttl == 1
            key = store.schema.node("n1")
            await store.put(key, b"{}", lease.id)
            assert (await store.get(key)) is not None
            assert await store.keepalive(lease.id) == 1
            assert await store.lease_time_to_live(lease.id) in ((0, 1), (1, 1))
            await world.pass_time(1.0)

            async def gone() -> bool:
                return await store.get(key) is None

            await eventually_async(gone, within=10, what="the leased key gone")
            with pytest.raises(LeaseLost, match="TTL 0"):
                await store.keepalive(lease.id)
            with pytest.raises(LeaseLost):
                await store.put(key, b"{}", lease.id)
            assert await store.lease_remaining(lease.id) == -1
            assert (await store.lease_time_to_live(lease.id))[0] == -1

    async def test_keepalive_resets_the_full_ttl(self, world: World) -> None:
        async with world.store() as store:
            lease = await store.grant_lease(3)
            key = store.schema.node("n1")
            await store.put(key, b"{}", lease.id)
            await world.pass_time(2.0)
            assert await store.keepalive(lease.id) == 3
            await world.pass_time(2.0)
            assert await store.get(key) is not None
            assert await store.lease_remaining(lease.id) in (0, 1)

    async def test_revoke_deletes_at_once(self, world: World) -> None:
        async with world.store() as store:
            lease = await store.grant_lease(30)
            key = store.schema.node("n1")
            await store.put(key, b"{}", lease.id)
            await store.revoke(lease.id)
            assert await store.get(key) is None
            await store.revoke(lease.id)  # twice is fine


class TestWatch:
    async def test_every_change_under_the_prefix_from_a_revision(self, world: World) -> None:
        """Puts, deletes and a lease's end arrive in order; other prefixes stay out."""
        async with world.store() as store, world.store("other") as other:
            s = store.schema
            before = await store.put(s.node("early"), b"0")
            events: list[WatchEvent] = []
            task = asyncio.create_task(collect(store, s.prefix, before + 1, events))
            try:
                lease = await store.grant_lease(30)
                await other.put(other.schema.node("x"), b"not ours")
                put = await store.put(s.node("n1"), b"1", lease.id)
                await store.delete(s.node("early"))
                await store.revoke(lease.id)
                await eventually_async(lambda: len(events) >= 3, within=10, what="three events")
                await asyncio.sleep(0.1)  # nothing else may follow
                kinds = [(e.kind, e.key.rsplit("/", 1)[1]) for e in events]
                assert kinds == [("put", "n1"), ("delete", "early"), ("delete", "n1")]
                assert events[0].mod_revision == put and events[0].lease == lease.id
                assert events[0].value == b"1"
                assert events[1].mod_revision < events[2].mod_revision
            finally:
                task.cancel()

    async def test_a_watch_behind_compaction_resyncs_then_misses_nothing(
        self, world: World
    ) -> None:
        async with world.store() as store:
            s = store.schema
            start = await store.put(s.node("a"), b"1")
            await store.put(s.node("b"), b"1")
            compacted = await world.compact(store)
            events: list[WatchEvent] = []
            task = asyncio.create_task(collect(store, s.prefix, start, events))
            try:
                after = await store.put(s.node("c"), b"1")
                await eventually_async(
                    lambda: any(e.mod_revision == after for e in events), within=10, what="c"
                )
                assert events[0].kind == "resync" and events[0].mod_revision == compacted
                assert [e.mod_revision for e in events[1:]] == [compacted, after]
            finally:
                task.cancel()
