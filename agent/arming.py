"""When the agent may arm a VIP's fence, and until when (pure: no I/O, no clock).

The arithmetic of `haproxy_py.cluster.timing`, applied to the keepalives one
agent has seen: an arm (an address added or its fence re-armed) is allowed
only within `latest_rearm` of the send of the freshest keepalive etcd renewed,
and only if the fence it sets falls `fence_margin` before that keepalive's
lease deadline. So every fence falls by `send + fence_deadline`, whichever
path armed it, and after a revoke no fence outlives the controller's embargo.

With `Timing.lapse` the agent counts on `lease_ttl` from each renewed send, whatever
longer TTL etcd granted, and gives the lease up once that has run out (`lapsed`): a
keepalive answered after that arms nothing, so a controller that read the lease at 0 s
left may reassign at once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from haproxy_py.cluster.timing import Timing, latest_rearm


@dataclass
class LeaseClock:
    """The lease deadline and the send time of the freshest successful keepalive."""

    timing: Timing
    deadline: float = -math.inf  # the lease cannot end before this (monotonic)
    last_sent: float = -math.inf  # send time of the freshest keepalive etcd renewed

    def renewed(self, sent: float, ttl: float) -> None:
        """etcd renewed the lease for `ttl` s on a keepalive (or grant) sent at `sent`."""
        if self.timing.lapse:
            ttl = min(ttl, self.timing.lease_ttl)
        self.deadline = max(self.deadline, sent + ttl)
        self.last_sent = max(self.last_sent, sent)

    def lost(self) -> None:
        self.deadline = self.last_sent = -math.inf

    def lapsed(self, now: float) -> bool:
        """The agent lapses, and `lease_ttl` has passed since its freshest renewed send."""
        return self.timing.lapse and now >= self.deadline

    def expiry(self, now: float) -> float:
        """When a fence armed now falls (the kernel slack included)."""
        return now + self.timing.address_lifetime + self.timing.kernel_slack

    def may_arm(self, now: float) -> bool:
        """An arm now is justified by the freshest keepalive and falls before its lease."""
        t = self.timing
        return (
            now - self.last_sent <= latest_rearm(t)
            and self.expiry(now) <= self.deadline - t.fence_margin
        )
