"""`ha-agent` that writes its node record DELAY seconds late whenever the record newly lists
a VIP as held (`every`: every write of it, the release acknowledgements too).

A lab stand-in for a slow etcd round trip of the new owner: between its
gratuitous ARP (the clients' packets reach it from then on) and its node
record listing the VIP (the old owner's cue to send its 1001), DELAY seconds
pass. Other writes (the old owner's release acknowledgement among them) are not
delayed, so the move itself is as fast as ever. A hand-over that relies on
timing instead of its grace period shows resets here.

A slow etcd for every write (`every`) also delays the old owner's release
acknowledgement, so the VIP reaches its next owner DELAY seconds after the old
owner let it go: its clients must not be told to reconnect before that.

`drain=SECONDS` holds back each drain of a released VIP's clients (the 1001s)
that long after the fence lets them out: a starved proxy, which takes its time
to write the 1001s, as a deterministic stand-in.

    python -m tests.lab.agent.slow_agent DELAY [every] [drain=SECONDS] --config FILE
"""

from __future__ import annotations

import asyncio
import json
import sys

from agent.cli import main
from agent.proxy import ProxyClient
from haproxy_py.cluster.store import Store

DELAY = float(sys.argv.pop(1))
EVERY = sys.argv[1:2] == ["every"] and bool(sys.argv.pop(1))
DRAIN = float(sys.argv.pop(1)[len("drain=") :]) if sys.argv[1].startswith("drain=") else 0.0
_put = Store.put
_listed: dict[str, set[str]] = {}  # node key -> the VIPs its last record listed


async def _slow_put(self: Store, key: str, value: bytes, lease: int = 0) -> int:
    if key.startswith(self.schema.nodes_prefix):
        vips = set(json.loads(value).get("vips", ()))
        if EVERY or vips - _listed.get(key, set()):
            await asyncio.sleep(DELAY)
        _listed[key] = vips
    return await _put(self, key, value, lease)


_drain = ProxyClient.drain_address


async def _late_drain(self: ProxyClient, address: str) -> str:
    await asyncio.sleep(DRAIN)
    return await _drain(self, address)


Store.put = _slow_put
if DRAIN:
    ProxyClient.drain_address = _late_drain

if __name__ == "__main__":
    main()
