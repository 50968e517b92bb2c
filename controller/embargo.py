"""Which vacated VIPs must not be assigned yet, because their owner's lease was revoked
(pure: no I/O; the loop passes its monotonic clock).

A lease revoked for failed probes (`controller.probes`) may belong to a node that is alive
and still re-arming its fence from keepalives etcd renewed just before the revoke; its fence
falls within `timing.fence_deadline` of the moment etcd applied the revoke. Any controller
may revoke (the leader, or a standby that found the leader failing its probes too), and any
controller may lead next, so the embargo cannot live in the revoker's memory. Instead the
revoker writes `revoked/<lease>` (with its fence deadline) *before* the revoke
(`controller.revoke`), and every
controller, standbys too, notes when it *first* reads an assignment vacated (its lease
gone) whose lease has that marker. Such a read reflects the revoke, so it is later than
the revoke took effect: counting the embargo from it is safe on every controller, whoever
revoked and whoever leads. A controller that reads it late only waits longer.

A lease that ended without a marker (it expired, or the agent stopped cleanly) needs no
embargo: the timing rule makes its fence fall before etcd can expire it.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from haproxy_py.cluster.records import ClusterView


@dataclass
class Embargo:
    """When each marked, vacated lease's embargo ends. `wait`: this controller's own fence
    deadline (0 when it does not know the agents' timing); the marker's, written by the
    revoker, counts when longer."""

    wait: float = 0.0
    until: dict[int, float] = field(default_factory=dict)  # lease -> monotonic end

    def observe(self, view: ClusterView, now: float) -> None:
        """Note the marked leases `view` shows gone (call with every fresh, vacated view)."""
        gone = {a.lease for a in view.vacated.values() if a.lease in view.revoked}
        self.until = {lease: t for lease, t in self.until.items() if lease in gone}
        for lease in gone:
            self.until.setdefault(lease, now + max(self.wait, view.revoked[lease]))

    def held(self, view: ClusterView, now: float) -> frozenset[str]:
        """The vacated VIPs still under embargo."""
        return frozenset(
            vip for vip, a in view.vacated.items() if now < self.until.get(a.lease, -math.inf)
        )

    def guard(self, view: ClusterView, now: float) -> ClusterView:
        """The view (observed first: it may be the first to show a lease gone) with embargoed
        VIPs occupied and no longer vacated, so nothing assigns them yet, and nothing clears
        their keys either: a controller leading next must still find them vacated."""
        self.observe(view, now)
        held = self.held(view, now)
        if not held:
            return view
        vacated = {v: a for v, a in view.vacated.items() if v not in held}
        return dataclasses.replace(
            view, occupied=view.occupied | held, vacated=vacated, embargoed=held
        )

    def left(self, now: float) -> float:
        """How long until the last embargo ends (0: none); the loop decides again then."""
        return max((t - now for t in self.until.values()), default=0.0)
