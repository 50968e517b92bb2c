"""What the BGP lab's router does with connections: their spread, and how fast a path goes.

`spread` opens `count` new connections from the client namespace (each a new
source port, so a new layer-4 hash) and counts which node answered (`Via`).
`withdrawal` times a fault on one node until the router's kernel route has
lost that node's next hop, polling `ip route` in the router's namespace
(a poll takes about 3 ms, the resolution of the figure). Both are bounded in
count and time.
"""

from __future__ import annotations

import asyncio
import collections
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

from haproxy_py.lab import bgplab
from haproxy_py.lab.client import NetnsLoop, whoami
from haproxy_py.lab.control import Lab
from haproxy_py.lab.layout import PROXY_PORT

FAILED = "(failed)"


async def _spread(vip: str, count: int, concurrency: int, within: float) -> dict[str, int]:
    counts: collections.Counter[str] = collections.Counter()
    left = iter(range(count))

    async def worker() -> None:
        for _ in left:
            counts[await whoami(vip, PROXY_PORT, within) or FAILED] += 1

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return dict(counts)


def spread(lab: Lab, count: int, concurrency: int = 20, within: float = 2.0) -> dict[str, int]:
    """Node -> new connections it answered (failures under FAILED), from the client."""
    with NetnsLoop(lab.layout.client.netns) as loop:
        limit = count * within / concurrency + 30  # each connection is bounded by `within`
        return loop.run(_spread(lab.layout.vips[0], count, concurrency, within), timeout=limit)


@dataclass(frozen=True)
class Spread:
    mean: float
    worst: float  # the largest relative deviation from the mean, 0.1 = 10 %
    failed: int


def judge(counts: dict[str, int], nodes: list[str]) -> Spread:
    """(pure: no I/O, no clock) How evenly `nodes` shared the connections."""
    per_node = [counts.get(n, 0) for n in nodes]
    mean = statistics.fmean(per_node) if per_node else 0.0
    worst = max((abs(c - mean) / mean for c in per_node), default=0.0) if mean else 1.0
    return Spread(mean, worst, counts.get(FAILED, 0))


class Withdrawal(NamedTuple):
    at: float  # time.monotonic() right before the fault
    seconds: float  # from then until the router's route lacked the node


def withdrawal(
    lab: Lab, node: str, fault: Callable[[], object], limit: float = 5.0, every: float = 0.001
) -> Withdrawal:
    """Time `fault()` until the router's route to the first VIP lacks `node`'s next hop,
    looking every `every` s (plus the ~3 ms of a look); AssertionError when it is still
    there after `limit` s."""
    vip, address = lab.layout.vips[0], lab.layout.node(node).address
    assert address in bgplab.next_hops(lab, vip), f"{node} is not a next hop before the fault"
    start = time.monotonic()
    fault()
    while address in bgplab.next_hops(lab, vip):
        if time.monotonic() - start > limit:
            raise AssertionError(f"{node} still a next hop for {vip} {limit:g} s after the fault")
        time.sleep(every)
    return Withdrawal(start, time.monotonic() - start)
