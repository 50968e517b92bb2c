"""A node-agent stand-in for hactl tests: the etcd side of the hand-over protocol, no IPs.

It registers `nodes/<name>` under its own lease, keeps the lease alive, and
acknowledges a planned move of one of its VIPs (state `releasing`) by deleting
`vips/<vip>` (compare: unchanged since the controller's write) - what the real
agent does after removing the address. SIGTERM revokes the lease.

    python -m tests.integration.hactl.agent_standin --etcd 127.0.0.1:2379 --cluster c --name node-a
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import time

from haproxy_py.cluster.config import EtcdConfig
from haproxy_py.cluster.records import NodeRecord, VipAssignment
from haproxy_py.cluster.store import Store


async def _keepalive(store: Store, lease_id: int, ttl: int) -> None:
    while True:
        await asyncio.sleep(ttl / 4)
        await store.keepalive(lease_id)


async def _acknowledge_releases(store: Store, name: str) -> None:
    view = await store.read_view()
    for vip, assignment in view.vips.items():
        if assignment.node == name and assignment.state == "releasing":
            await store.delete_if(store.schema.vip(vip), assignment.mod_revision)
    async for event in store.watch(store.schema.vips_prefix, view.revision + 1):
        if event.kind != "put":
            continue
        vip = event.key.rpartition("/")[2]
        parsed = VipAssignment.parse(vip, event.value, event.lease, event.mod_revision)
        if parsed and parsed.node == name and parsed.state == "releasing":
            await store.delete_if(event.key, event.mod_revision)


async def run(args: argparse.Namespace) -> None:
    config = EtcdConfig(tuple(args.etcd.split(",")), timeout=5.0)
    async with Store(config, args.cluster) as store:
        lease = await store.grant_lease(args.ttl)
        now = time.time()
        record = NodeRecord(
            name=args.name,
            address=args.address,
            interface="standin0",
            priority=args.priority,
            version="standin",
            healthy=not args.unhealthy,
            healthy_since=None if args.unhealthy else now,
            backends_up=1,
            backends_total=2,
            connections=3,
            updated=now,
        )
        await store.put(store.schema.node(args.name), record.to_json(), lease.id)
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        print("ready", flush=True)
        tasks = [
            asyncio.create_task(_keepalive(store, lease.id, args.ttl)),
        ]
        if not args.no_ack:
            tasks.append(asyncio.create_task(_acknowledge_releases(store, args.name)))
        stopped = asyncio.create_task(stop.wait())
        # A failing task (lease lost, etcd gone) ends the stand-in, as it would a real agent.
        await asyncio.wait([stopped, *tasks], return_when=asyncio.FIRST_COMPLETED)
        for task in [stopped, *tasks]:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await store.revoke(lease.id)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--etcd", required=True)
    parser.add_argument("--cluster", required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--address", default=None)
    parser.add_argument("--priority", type=int, default=100)
    parser.add_argument("--ttl", type=int, default=10)
    parser.add_argument("--unhealthy", action="store_true")
    # A hung agent: keeps its lease but never lets go of a VIP.
    parser.add_argument("--no-ack", action="store_true")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
