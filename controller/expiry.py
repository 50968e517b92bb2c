"""Revoke an owner's lease as soon as it has provably run out (or lapsed), not when etcd's sweep
finds it.

etcd checks for expired leases every 500 ms, so a dead node's VIPs wait
0-0.5 s past its lease's end before anything moves. The controller can do
better from `LeaseTimeToLive` alone. etcd answers it in whole seconds,
truncated, computed on the leader: 0 means less than a second left, and a
lease with granted TTL `G` refreshed at `u` reads at least 1 until `u + G - 1`.
So, for `G >= 2`:

* a reading of 0 received at `t` proves the lease ends before `t + 1`, unless
  it is refreshed later;
* readings of 0 less than `min(COVER, G - 1)` apart from then on, up to one
  sent at or after `t + 1`, prove that no refresh came in between (it would
  have read 1), and that the lease had run out when that last reading was
  taken; etcd refuses to refresh an expired lease, so none can follow.

With `G = 1` a fresh lease already reads 0: nothing can be proven, and etcd's
sweep decides.

An owner that lapses (its node record's `lapse`: it gives the lease up itself that
long after its last renewed keepalive, `haproxy_py.cluster.timing`) needs no second
reading: when `lapse_proven(lapse, G)`, the first 0 proves it has lapsed, its fence
fallen, and that it acts on no later renewal, so the lease is revoked at once.

Then revoking it takes nothing from a live holder: by the timing rule
(`haproxy_py.cluster.timing`) its fence fell `fence_margin` before the lease
could end. A failed or slow call breaks the proof, which starts over; etcd's
own sweep remains the fallback.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

from haproxy_py.cluster.records import ClusterView
from haproxy_py.cluster.store import StoreError
from haproxy_py.cluster.storeapi import KVStore
from haproxy_py.cluster.timing import lapse_proven

COVER = 0.5  # readings further apart than this prove nothing (a refresh reads 1 for G - 1 s)
WATCH_EVERY = 0.1  # while the lease reads >= 1 s: how late its last second is noticed
PROVE_EVERY = 0.25  # once it reads 0


class Verdict(Enum):
    ALIVE = "alive"  # a second or more left, or the proof was broken
    DYING = "dying"  # less than a second left, no refresh seen since
    EXPIRED = "expired"  # provably run out: revoke it
    GONE = "gone"  # etcd no longer has it


@dataclass
class ExpiryProof:
    """Folds TimeToLive readings into a verdict (pure: no I/O, no clock)."""

    lapse: int = 0  # the owner gives the lease up itself this long after its last keepalive
    dying_since: float | None = None  # receive time of the first 0 of this run
    last_sent: float | None = None

    def reading(self, sent: float, received: float, ttl: int | None, granted: int = 2) -> Verdict:
        """One reading of `ttl` seconds left (None: the call failed) out of `granted`, sent at
        `sent` and answered at `received`."""
        covered = self.last_sent is not None and received - self.last_sent < min(COVER, granted - 1)
        self.last_sent = sent
        if ttl is not None and ttl < 0:
            return Verdict.GONE
        if ttl == 0 and lapse_proven(self.lapse, granted):
            return Verdict.EXPIRED
        if ttl is None or ttl >= 1 or granted < 2:
            self.dying_since = None
            return Verdict.ALIVE
        if self.dying_since is None or not covered:
            self.dying_since = received
            return Verdict.DYING
        if sent >= self.dying_since + 1.0:
            return Verdict.EXPIRED
        return Verdict.DYING

    def next_reading(self, now: float) -> float:
        """When to read again: at once when the proof can complete, else on the cadence."""
        if self.dying_since is None:
            return now + WATCH_EVERY
        return min(now + PROVE_EVERY, max(now, self.dying_since + 1.0))


def lapse_of(view: ClusterView, node: str, lease: int) -> int:
    """What `node`'s record under `lease` says of its lapse (0 without such a record)."""
    record = view.nodes.get(node)
    return record.lapse if record is not None and record.lease == lease else 0


async def revoke_when_expired(
    store: KVStore, lease_id: int, clock: Callable[[], float] = time.monotonic, lapse: int = 0
) -> bool:
    """Watch `lease_id` (of an owner that lapses after `lapse` s, 0: not) until it has provably
    run out, then revoke it: True. False when etcd removed it first. Runs until then; cancel
    it when the lease no longer matters."""
    proof = ExpiryProof(lapse)
    while True:
        sent = clock()
        ttl: int | None
        try:
            ttl, granted = await store.lease_time_to_live(lease_id)
        except StoreError:
            ttl, granted = None, 0
        verdict = proof.reading(sent, clock(), ttl, granted)
        if verdict is Verdict.GONE:
            return False
        if verdict is Verdict.EXPIRED:
            try:
                await store.revoke(lease_id)
            except StoreError:
                return False  # etcd's sweep removes it anyway
            return True
        await asyncio.sleep(max(0.0, proof.next_reading(clock()) - clock()))
