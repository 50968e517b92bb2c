"""Revoking another process's lease for failed probes: the `revoked/` marker first.

The marker tells every controller that the lease's holder may still be fencing itself
(`controller.embargo`); it is written before the revoke, so any read that shows the lease
gone shows the marker too. It lives under a lease of its own (`MARKER_TTL`), so markers
clean themselves up without a write. The revoke is sent only while the marker has at
least `MARKER_TTL / 2` left, and an etcd call is bounded by the client timeout (a few
seconds), so the marker outlives the revoke by tens of seconds: far longer than any
embargo. Revoking a lease already gone is fine (two controllers may both revoke it).
"""

from __future__ import annotations

import time

from haproxy_py.cluster.jsonvalue import dumps
from haproxy_py.cluster.storeapi import KVStore

MARKER_TTL = 60


async def revoke_marked(store: KVStore, lease: int, wait: float, holder: str, by: str) -> bool:
    """Mark `lease` revoked (its VIPs embargoed `wait` s; held by `holder`, revoked by `by`),
    then revoke it. False: too slow to trust the marker, nothing revoked. StoreError on an
    etcd failure."""
    started = time.monotonic()
    marker = await store.grant_lease(MARKER_TTL)
    record = dumps({"wait": wait, "holder": holder, "by": by, "at": time.time()})
    await store.put(store.schema.revoked(lease), record, marker.id)
    if time.monotonic() - started > MARKER_TTL / 2:
        return False
    await store.revoke(lease)
    return True
