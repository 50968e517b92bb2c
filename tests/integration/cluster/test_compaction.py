"""Compaction while watching: a watch that comes back behind compacted history misses nothing.

Two watchers: the store's own contract (a daemon-shaped mirror), and the real
`ha-controller` process, whose tick is set far longer than the test so that
only its watch can make it act on a request.

etcd compacts periodically (hourly retention in production, 10 min in the lab).
A watch that is down across a compaction comes back to a start revision etcd no
longer has; the store then yields `resync` and the watcher re-reads. Here the
watcher reaches etcd through a TCP forwarder that the test cuts (every
connection reset, new ones refused); meanwhile the test writes and compacts
directly, then restores the path: the watcher must see the resync and end with
exactly etcd's state, including a write made just after its re-read.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import time
from pathlib import Path

from haproxy_py.cluster import maintenance
from haproxy_py.cluster.intents import new_request_id
from haproxy_py.cluster.records import Request
from haproxy_py.cluster.requestflow import submit, wait_result
from haproxy_py.cluster.store import Store
from haproxy_py.cluster.storeapi import WatchEvent
from tests.integration.cluster.helpers import VIP1, etcd_config
from tests.support.etcd import EtcdCluster
from tests.support.stand_in import StandInAgent
from tests.support.wait import eventually_async

REPO = Path(__file__).resolve().parents[3]


class Forwarder:
    """127.0.0.1:port -> etcd, with a switch: `cut()` resets every connection and refuses new
    ones until `restore()` (same port)."""

    def __init__(self, target: str) -> None:
        host, _, port = target.rpartition(":")
        self.target = (host, int(port))
        self.port = 0
        self.server: asyncio.Server | None = None
        self.writers: set[asyncio.StreamWriter] = set()

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def restore(self) -> None:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
        self.port = self.server.sockets[0].getsockname()[1]

    async def cut(self) -> None:
        assert self.server is not None
        self.server.close()
        for writer in list(self.writers):
            writer.transport.abort()
        self.writers.clear()
        await self.server.wait_closed()
        await asyncio.sleep(0.05)  # let the pipes see the reset and end

    async def _handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        upstream_r, upstream_w = await asyncio.open_connection(*self.target)
        self.writers |= {client_w, upstream_w}

        async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError, OSError):
                while data := await reader.read(65536):
                    writer.write(data)
                    await writer.drain()
            writer.transport.abort()

        await asyncio.gather(pipe(client_r, upstream_w), pipe(upstream_r, client_w))


class Mirror:
    """A daemon-shaped watcher: snapshot + events, events at or below the snapshot dropped."""

    def __init__(self, store: Store, prefix: str, after_resync: Store) -> None:
        self.store = store
        self.prefix = prefix
        self.after_resync = after_resync
        self.state: dict[str, bytes] = {}
        self.floor = 0
        self.resyncs: list[WatchEvent] = []
        self.seen_by_event: set[str] = set()

    async def snapshot(self) -> None:
        kvs, revision = await self.store.get_prefix(self.prefix)
        self.state = {kv.key: kv.value for kv in kvs}
        self.floor = revision

    async def run(self) -> None:
        await self.snapshot()
        async for event in self.store.watch(self.prefix, self.floor + 1):
            if event.kind == "resync":
                self.resyncs.append(event)
                await self.snapshot()
                # A change right after the re-read, before the watch is open again: it must
                # arrive as an event (a watch reopened at "now" would never deliver it).
                await self.after_resync.put(f"{self.prefix}after-resync-{len(self.resyncs)}", b"1")
                continue
            if event.mod_revision <= self.floor:
                continue
            self.seen_by_event.add(event.key)
            if event.kind == "put":
                self.state[event.key] = event.value
            else:
                self.state.pop(event.key, None)


async def test_watch_behind_compaction_resyncs_and_misses_nothing(etcd: EtcdCluster) -> None:
    prefix = "/haproxy-py/c/"
    path = Forwarder(etcd.endpoints[0])
    await path.restore()
    async with (
        Store(etcd_config([path.endpoint]), "c") as watched,
        Store(etcd_config(etcd.endpoints), "c") as writer,
    ):
        for i in range(5):
            await writer.put(f"{prefix}k{i}", b"before")
        mirror = Mirror(watched, prefix, writer)
        task = asyncio.create_task(mirror.run())
        try:
            await eventually_async(lambda: _async(mirror.state.get(f"{prefix}k4") == b"before"))
            await path.cut()  # the watch is down from now on
            for i in range(5):
                await writer.put(f"{prefix}k{i}", b"while-down")
            await writer.delete(f"{prefix}k0")
            await writer.put(f"{prefix}new", b"while-down")
            compacted = await maintenance.compact(writer)
            await path.restore()

            # The mirror re-reads, then writes after-resync-1: once that key exists its
            # re-read is done, so `later` can only reach it as an event.
            async def resynced() -> bool:
                return await writer.get(f"{prefix}after-resync-1") is not None

            await eventually_async(resynced, within=30)
            assert mirror.resyncs[0].mod_revision == compacted
            await writer.put(f"{prefix}later", b"after")

            async def converged() -> bool:
                kvs, _ = await writer.get_prefix(prefix)
                events = {f"{prefix}after-resync-1", f"{prefix}later"} <= mirror.seen_by_event
                return events and {kv.key: kv.value for kv in kvs} == mirror.state

            await eventually_async(converged, within=20)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await path.cut()
    assert f"{prefix}after-resync-1" in mirror.seen_by_event
    assert f"{prefix}later" in mirror.seen_by_event
    assert f"{prefix}k0" not in mirror.state
    assert mirror.state[f"{prefix}new"] == b"while-down"


CONTROLLER = """
[cluster]
name = "c"
vips = ["{vip}"]

[etcd]
endpoints = ["{endpoint}"]
timeout = 0.5

[controller]
id = "ctl"
lease_ttl = 10     # an etcd member restart (about a second) costs no leadership
tick = 60          # far longer than the test: every reaction below comes from the watch

[logging]
format = "json"
"""


async def test_controller_watching_through_compaction_acts_on_every_request(
    etcd: EtcdCluster, tmp_path: Path
) -> None:
    path = Forwarder(etcd.endpoints[0])
    await path.restore()
    config = tmp_path / "ctl.toml"
    config.write_text(CONTROLLER.format(vip=VIP1, endpoint=path.endpoint))
    log_path = tmp_path / "ctl.log"
    cfg = etcd_config(etcd.endpoints)
    agent = await StandInAgent(cfg, "c", "a").start()
    proc = _start_controller(config, log_path)
    try:
        async with Store(cfg, "c") as store:
            await eventually_async(lambda: _leader_holds(store), within=30)
            await path.cut()  # the controller's only way to etcd
            paused = await submit(store, Request(new_request_id(time.time()), "pause"))
            # One more write, so that compaction passes the revision the watch resumes from.
            await store.put(agent.key, agent.record().to_json(), lease=agent.lease)
            await maintenance.compact(store)
            await path.restore()

            async def resynced() -> bool:
                return "etcd watch behind compacted history" in log_path.read_text()

            await eventually_async(resynced, within=30)
            result = await wait_result(store, paused.id, 20)
            assert result.result is not None and result.result.status == "done"
            resumed = await submit(store, Request(new_request_id(time.time()), "resume"))
            started = time.monotonic()
            result = await wait_result(store, resumed.id, 20)
            assert result.result is not None and result.result.status == "done"
            assert time.monotonic() - started < 20  # well inside the 60 s tick
            settings = (await store.read_view()).settings
            assert settings is not None and not settings.paused
    finally:
        proc.kill()
        proc.wait()
        await agent.close()
        await path.cut()
    assert "Traceback" not in log_path.read_text()


def _start_controller(config: Path, log_path: Path) -> subprocess.Popen[bytes]:
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "controller", "--config", str(config)],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=REPO,
        )


async def _leader_holds(store: Store) -> bool:
    view = await store.read_view()
    return view.leader is not None and view.owner(VIP1) == "a"


async def _async(value: bool) -> bool:
    return value
