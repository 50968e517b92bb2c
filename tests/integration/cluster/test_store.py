"""The etcd store beyond the shared contract: failures, endpoints, TLS, requests.

Keys, leases and watches are pinned for both stores in `test_store_contract.py`.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from haproxy_py import pki
from haproxy_py.cluster.config import EtcdConfig
from haproxy_py.cluster.intents import new_request_id
from haproxy_py.cluster.records import Request, RequestResult
from haproxy_py.cluster.requestflow import submit, wait_result
from haproxy_py.cluster.store import Store, StoreError, StoreUnavailable
from haproxy_py.cluster.storeapi import WatchEvent
from haproxy_py.cluster.storeerrors import RequestTimeout
from tests.integration.cluster.helpers import etcd_config
from tests.support.etcd import EtcdCluster, EtcdTLS
from tests.support.wait import eventually_async


async def collect(store: Store, prefix: str, revision: int, sink: list[WatchEvent]) -> None:
    async for event in store.watch(prefix, revision):
        sink.append(event)


class TestFailures:
    async def test_frozen_etcd_fails_within_the_timeout(self, etcd: EtcdCluster) -> None:
        async with Store(etcd_config(etcd.endpoints, timeout=0.5), "c") as store:
            await store.get("warm-up")
            etcd.members[0].freeze()
            try:
                started = time.monotonic()
                with pytest.raises(StoreUnavailable, match=r"timeout 0\.5 s"):
                    await store.get("x")
                assert time.monotonic() - started < 5
            finally:
                etcd.members[0].thaw()
            await store.get("x")

    async def test_stopped_etcd_names_the_endpoints(self, etcd: EtcdCluster) -> None:
        async with Store(etcd_config(etcd.endpoints), "c") as store:
            etcd.members[0].kill()
            with pytest.raises(StoreUnavailable, match=etcd.endpoints[0]):
                await store.read_view()

    async def test_watch_recovers_across_an_etcd_restart(self, etcd: EtcdCluster) -> None:
        """Events after a restart arrive on the same watch (re-watched from the last revision)."""
        async with Store(etcd_config(etcd.endpoints), "c") as store:
            prefix = store.schema.prefix
            revision = await store.put(store.schema.node("before"), b"{}")
            seen: list[WatchEvent] = []
            task = asyncio.create_task(collect(store, prefix, revision, seen))
            try:
                await eventually_async(lambda: _async(len(seen) == 1))
                etcd.members[0].restart()
                await eventually_async(lambda: _put_ok(store, store.schema.node("after")))
                await eventually_async(lambda: _async(any(e.key.endswith("/after") for e in seen)))
                assert [e.key.rsplit("/", 1)[-1] for e in seen] == ["before", "after"]
            finally:
                task.cancel()

    async def test_watch_moves_to_another_member_without_losing_events(
        self, etcd_cluster: EtcdCluster
    ) -> None:
        """A member dies; writes made elsewhere meanwhile still reach the watcher."""
        cfg = etcd_config(etcd_cluster.endpoints)
        async with (
            Store(cfg, "c") as watcher,
            Store(etcd_config(etcd_cluster.endpoints[1:]), "c") as writer,
        ):
            revision = await writer.put(writer.schema.node("n0"), b"{}")
            seen: list[WatchEvent] = []
            task = asyncio.create_task(collect(watcher, watcher.schema.prefix, revision, seen))
            try:
                await eventually_async(lambda: _async(len(seen) == 1))
                etcd_cluster.members[0].kill()
                for i in range(1, 4):  # the first may wait out a new raft election
                    key = writer.schema.node(f"n{i}")
                    await eventually_async(lambda key=key: _put_ok(writer, key))
                await watcher.get("nudge")  # a call notices the dead member and moves on
                await eventually_async(lambda: _async(len(seen) == 4))
                assert [e.key.rsplit("/", 1)[-1] for e in seen] == ["n0", "n1", "n2", "n3"]
            finally:
                task.cancel()


class TestRequests:
    async def test_submit_and_wait_for_the_result(self, etcd: EtcdCluster) -> None:
        async with Store(etcd_config(etcd.endpoints), "c") as store:
            request = Request(id=new_request_id(time.time()), kind="pause", created=time.time())
            stored = await submit(store, request)

            async def answer() -> None:
                done = RequestResult("done", "paused", finished=time.time())
                await store.replace(
                    store.schema.request(request.id),
                    stored.with_result(done).to_json(),
                    stored.mod_revision,
                )

            waiter = asyncio.create_task(wait_result(store, request.id, 10))
            await asyncio.sleep(0)  # let the waiter start watching before the answer lands
            await answer()
            result = await waiter
            assert result.result is not None and result.result.status == "done"

    async def test_no_answer_times_out_clearly(self, etcd: EtcdCluster) -> None:
        async with Store(etcd_config(etcd.endpoints), "c") as store:
            request = Request(id=new_request_id(time.time()), kind="pause")
            await submit(store, request)
            with pytest.raises(RequestTimeout, match="is a controller running"):
                await wait_result(store, request.id, 0.3)


async def _async(value: bool) -> bool:
    return value


async def _put_ok(store: Store, key: str) -> bool:
    try:
        await store.put(key, b"{}")
    except StoreUnavailable:
        return False
    return True


class TestTLS:
    async def test_client_certificates_are_required_and_work(self, tmp_path: Path) -> None:
        """etcd with client-cert-auth: our certificate gets in; without one we get a clear error."""
        pki.init_ca(tmp_path)
        server = pki.issue(tmp_path, "etcd", ["127.0.0.1"])
        client = pki.issue(tmp_path, "client", client=True)
        ca = tmp_path / "ca.crt"
        tls = EtcdTLS(ca, server.cert, server.key, client.cert, client.key)
        with EtcdCluster.start(size=1, tls=tls) as etcd:
            good = EtcdConfig(tuple(etcd.endpoints), 2.0, ca, client.cert, client.key)
            async with Store(good, "tls") as store:
                await store.put(store.schema.config, b"{}")
                assert (await store.read_view()).revision > 1
            anonymous = EtcdConfig(tuple(etcd.endpoints), 2.0, ca)
            async with Store(anonymous, "tls") as store:
                with pytest.raises(StoreError, match=etcd.endpoints[0]):
                    await store.read_view()


class TestMemberFaults:
    async def test_a_frozen_member_costs_one_timeout_then_calls_move_on(
        self, etcd_cluster: EtcdCluster
    ) -> None:
        async with Store(etcd_config(etcd_cluster.endpoints, timeout=0.5), "c") as store:
            await store.put(store.schema.config, b"{}")
            etcd_cluster.members[0].freeze()
            try:
                with pytest.raises(StoreUnavailable, match="timed out"):
                    await store.get(store.schema.config)
                assert store.endpoint == etcd_cluster.endpoints[1]
                await eventually_async(lambda: _put_ok(store, store.schema.epoch))
            finally:
                etcd_cluster.members[0].thaw()
