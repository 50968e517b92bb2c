"""VIPs whose key stays in etcd but whom nobody holds any more (the owner's release
acknowledgement, or an owner whose lease is gone).

VIP keys are not bound to any lease: agents may only read `vips/`, and etcd
demands write access to every key on a lease before a put under it or its
revoke. So a VIP's key outlives its owner, and the controller, alone, decides
it is vacant:

* acknowledged: the owner's node record lists the key's mod revision under
  `released` (the agent has shown the address gone and never holds that
  assignment again);
* stale: the assignment names a lease that is not its owner's registered one
  (the record went with the lease, or the node registered again), and etcd
  confirms that lease is gone, so the owner has fenced itself. A key with no
  lease at all (hand-written, or an older version's mistake) is stale at once.

The decision core then sees the VIP as unowned and gives it on in one
transaction that compares the key's mod revision.
"""

from __future__ import annotations

from haproxy_py.cluster.records import ClusterView
from haproxy_py.cluster.storeapi import KVStore


async def vacate(store: KVStore, view: ClusterView) -> ClusterView:
    """`view` with every vacant VIP unowned (see `ClusterView.vacate`)."""
    vacant: list[str] = []
    for vip, a in view.vips.items():
        gone = view.stale(vip) and (a.lease == 0 or await store.lease_remaining(a.lease) < 0)
        if gone or view.acknowledged(vip):
            vacant.append(vip)
    return view.vacate(vacant)
