"""`agent.registration`: in BGP mode a new lease's first record waits for the first verdicts."""

from __future__ import annotations

import asyncio
import time

from agent.registration import Registration, Write
from agent.state import AgentCore, Hysteresis
from haproxy_py.cluster.agent_config import Timing
from haproxy_py.cluster.allowlist import AllowList
from haproxy_py.cluster.config import NodeConfig
from haproxy_py.cluster.memstore import MemoryStore
from haproxy_py.cluster.records import NodeRecord

TIMING = Timing(lease_ttl=2, keepalive_interval=0.5, address_lifetime=1, fence_margin=0.2)


class Counting(MemoryStore):
    def __init__(self) -> None:
        super().__init__("r")
        self.puts = 0

    async def put(self, key: str, value: bytes, lease: int = 0) -> int:
        self.puts += 1
        return await super().put(key, value, lease)


async def granted(first_wait: float) -> tuple[Counting, Registration]:
    """A registration whose core was just granted a lease."""
    store = Counting()
    core = AgentCore("n1", TIMING, Hysteresis(1, 1), AllowList.parse([]))
    tasks: set[asyncio.Task[None]] = set()

    def enqueue(write: Write) -> None:  # the writer: one write at a time, at once
        task = asyncio.ensure_future(write())
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    node = NodeConfig("n1", "198.18.0.1", "eth0", 100)
    now = time.monotonic()
    core.lease_granted((await store.grant_lease(10)).id, now, 2.0, now)
    return store, Registration(node, "0", core, store, enqueue, first_wait)


async def record(store: MemoryStore) -> NodeRecord | None:
    kv = await store.get(store.schema.node("n1"))
    return None if kv is None else NodeRecord.parse("n1", kv.value, kv.lease)


async def test_a_new_leases_first_record_says_what_the_first_probes_found() -> None:
    store, r = await granted(0.2)
    now = time.monotonic()
    r.publish()  # registered: nothing known yet
    r.core.readiness_sample(2, 2)
    r.publish()  # the backends counted
    r.core.health_sample(True, now)
    r.publish()  # live
    await asyncio.sleep(0.1)
    assert store.puts == 0
    await asyncio.sleep(0.3)
    assert store.puts == 1
    first = await record(store)
    assert first is not None and first.healthy and (first.ready, first.pools) == (2, 2)
    r.core.health_sample(False, now)
    r.publish()  # later changes are written at once
    await asyncio.sleep(0.05)
    assert store.puts == 2
    last = await record(store)
    assert last is not None and not last.healthy


async def test_without_a_wait_every_change_is_written_at_once() -> None:
    store, r = await granted(0.0)
    r.publish()
    await asyncio.sleep(0.05)
    assert store.puts == 1
