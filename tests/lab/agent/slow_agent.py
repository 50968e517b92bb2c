"""`ha-agent` whose writes of its node record lag by DELAY seconds.

A lab stand-in for a slow etcd round trip of the new owner: between its
gratuitous ARP (the clients' packets reach it from then on) and its node
record listing the VIP (the old owner's cue to send its 1001), DELAY seconds
pass. A hand-over that relies on timing instead of its grace period shows
resets here.

    python -m tests.lab.agent.slow_agent DELAY --config FILE
"""

from __future__ import annotations

import asyncio
import sys

from agent.cli import main
from haproxy_py.cluster.store import Store

DELAY = float(sys.argv.pop(1))
_put = Store.put


async def _slow_put(self: Store, key: str, value: bytes, lease: int = 0) -> int:
    if key.startswith(self.schema.nodes_prefix):
        await asyncio.sleep(DELAY)
    return await _put(self, key, value, lease)


Store.put = _slow_put

if __name__ == "__main__":
    main()
