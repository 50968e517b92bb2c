"""A small in-test agent stand-in: registers a node under a lease and follows the protocol.

It does what the hand-over protocol asks of an agent, minus the kernel: keep
`nodes/<name>` alive under its lease, list the VIPs assigned to it there as
held (the controller releases an assigned VIP its owner does not list),
acknowledge a release by naming the VIP key's mod revision under `released`
in its node record (agents may not write `vips/`), do the same for its VIPs
when its proxy turns unhealthy, revoke its lease on a clean stop. `crash()` just stops
keepalives, so the lease expires as it would for a dead node.

Tests use it in-process, or as a process of its own (hactl's tests):

    python -m tests.support.stand_in --etcd 127.0.0.1:2379 --cluster c --name node-a
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import time

from haproxy_py.cluster.config import EtcdConfig
from haproxy_py.cluster.records import NodeRecord, VipAssignment
from haproxy_py.cluster.store import LeaseLost, Store, StoreError


class StandInAgent:
    def __init__(
        self,
        etcd: EtcdConfig,
        cluster: str,
        name: str,
        priority: int = 100,
        ttl: int = 2,
        *,
        address: str = "198.18.0.1",
        healthy: bool = True,
        acknowledge: bool = True,
    ) -> None:
        self.store = Store(etcd, cluster)
        self.name = name
        self.priority = priority
        self.ttl = ttl
        self.address = address
        self.acknowledge = acknowledge  # False plays a hung agent that never lets go of a VIP
        self.lease = 0
        self.healthy = healthy
        self.healthy_since = time.time()
        self.acks: list[tuple[str, float]] = []  # (vip, time.monotonic()) of each release acked
        self.held: set[str] = set()
        self.released: dict[str, int] = {}  # vip -> mod revision of the assignment let go
        self._unpublished = False  # the record's last put failed: the keepalive loop retries
        self.lease_lost = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def key(self) -> str:
        return self.store.schema.node(self.name)

    def record(self) -> NodeRecord:
        return NodeRecord(
            name=self.name,
            address=self.address,
            interface="standin0",
            priority=self.priority,
            version="test",
            healthy=self.healthy,
            healthy_since=self.healthy_since if self.healthy else None,
            backends_up=1,
            backends_total=2,
            vips=tuple(sorted(self.held)),
            updated=time.time(),
            released=dict(self.released),
        )

    async def start(self) -> StandInAgent:
        self.lease = (await self.store.grant_lease(self.ttl)).id
        await self.store.put(self.key, self.record().to_json(), self.lease)
        self._tasks = [asyncio.create_task(self._keepalive())]
        if self.acknowledge:
            self._tasks.append(asyncio.create_task(self._follow_releases()))
        return self

    async def _keepalive(self) -> None:
        while True:
            try:
                await self.store.keepalive(self.lease)
            except LeaseLost:
                self.lease_lost.set()
                return
            except StoreError:
                pass  # keep trying until the lease runs out, like a real agent
            if self._unpublished:
                await self._publish()
            await asyncio.sleep(self.ttl / 4)

    async def _follow_releases(self) -> None:
        prefix = self.store.schema.vips_prefix
        kvs, revision = await self.store.get_prefix(prefix)
        for kv in kvs:
            await self._consider(kv.key, kv.value, kv.mod_revision)
        async for event in self.store.watch(prefix, revision + 1):
            if event.kind == "put":
                await self._consider(event.key, event.value, event.mod_revision)
            else:
                vip = event.key.rsplit("/", 1)[-1]
                self.released.pop(vip, None)
                await self._hold(vip, False)

    async def _consider(self, key: str, value: bytes, mod_revision: int) -> None:
        vip = key.rsplit("/", 1)[-1]
        record = VipAssignment.parse(vip, value)
        mine = record is not None and record.node == self.name and record.lease == self.lease
        if self.released.get(vip) != mod_revision:
            self.released.pop(vip, None)  # a new assignment: the old acknowledgement is moot
        await self._hold(vip, mine and record is not None and record.state == "assigned")
        if record and mine and record.state == "releasing" and vip not in self.released:
            self.released[vip] = mod_revision
            await self._publish()
            if not self._unpublished:
                self.acks.append((vip, time.monotonic()))

    async def _hold(self, vip: str, held: bool) -> None:
        """List `vip` as held in the node record (or not), as a real agent does."""
        if held == (vip in self.held):
            return
        if held:
            self.held.add(vip)
        else:
            self.held.discard(vip)
        await self._publish()

    async def _publish(self) -> None:
        try:
            await self.store.put(self.key, self.record().to_json(), self.lease)
        except StoreError:
            self._unpublished = True  # e.g. its etcd member died: retried, as an agent does
        else:
            self._unpublished = False

    async def set_healthy(self, healthy: bool) -> None:
        """Report proxy health; when it turns bad, drop our VIPs at once (as an agent must)."""
        self.healthy = healthy
        if healthy:
            self.healthy_since = time.time()
        if not healthy:
            kvs, _ = await self.store.get_prefix(self.store.schema.vips_prefix)
            for kv in kvs:
                vip = kv.key.rsplit("/", 1)[-1]
                record = VipAssignment.parse(vip, kv.value)
                if record and record.node == self.name:
                    self.released[vip] = kv.mod_revision
                    self.held.discard(vip)
        await self.store.put(self.key, self.record().to_json(), self.lease)

    async def _cancel(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []

    async def crash(self) -> None:
        """Stop everything without a word: the lease expires after its TTL."""
        await self._cancel()

    async def stop(self) -> None:
        """Clean stop: revoke the lease so the VIPs move at once."""
        await self._cancel()
        with contextlib.suppress(StoreError):
            await self.store.revoke(self.lease)

    async def close(self) -> None:
        await self._cancel()
        await self.store.close()


async def _run(args: argparse.Namespace) -> None:
    config = EtcdConfig(tuple(args.etcd.split(",")), timeout=5.0)
    agent = StandInAgent(
        config,
        args.cluster,
        args.name,
        args.priority,
        args.ttl,
        address=args.address,
        healthy=not args.unhealthy,
        acknowledge=not args.no_ack,
    )
    await agent.start()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    print("ready", flush=True)
    stopped = asyncio.create_task(stop.wait())
    lost = asyncio.create_task(agent.lease_lost.wait())
    # Losing the lease ends the stand-in, as it would end a real agent's hold.
    await asyncio.wait([stopped, lost], return_when=asyncio.FIRST_COMPLETED)
    stopped.cancel()
    lost.cancel()
    await agent.stop()
    await agent.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--etcd", required=True)
    parser.add_argument("--cluster", required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--address", default="198.18.0.1")
    parser.add_argument("--priority", type=int, default=100)
    parser.add_argument("--ttl", type=int, default=10)
    parser.add_argument("--unhealthy", action="store_true")
    parser.add_argument("--no-ack", action="store_true")
    asyncio.run(_run(parser.parse_args()))


if __name__ == "__main__":
    main()
