"""The agent's pure decision core: which VIP addresses this node may hold, and when.

No I/O and no clock: the daemon feeds it what it observed (keepalive results,
`vips/` assignments, proxy health samples, the kernel's addresses, the time)
and executes the actions it returns, in order. Keeping it pure lets tests walk
it through every interleaving, and lets the three safety rules be checked as
properties:

* an address is only ever given a lifetime that ends (kernel slack included)
  no later than `lease deadline - fence_margin`, where the deadline counts
  from the moment the last successful keepalive was *sent*;
* an address already held is re-armed only after a new keepalive success;
* when the proxy turns unhealthy every VIP is removed in the same step and
  the node's `vips/` keys are deleted, so the controller moves them at once.

A VIP is wanted when `vips/<vip>` names this node, is `assigned`, is bound to
this node's *current* lease (an assignment left from a lost lease is stale),
the proxy is healthy and the agent is not stopping.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from haproxy_py.cluster.agent_config import Timing

ASSIGNED = "assigned"
RELEASING = "releasing"


@dataclass(frozen=True)
class Assignment:
    """What `vips/<vip>` says: owner, state, the lease it is bound to, its mod revision."""

    owner: str
    state: str
    lease: int
    revision: int


# --- actions, executed by the daemon in the order returned ---------------------------------


@dataclass(frozen=True)
class SetAddress:
    """Add (`new`) or re-arm the address with valid/preferred lifetime `lifetime` seconds."""

    vip: str
    lifetime: float
    new: bool
    reason: str


@dataclass(frozen=True)
class RemoveAddress:
    vip: str
    reason: str


@dataclass(frozen=True)
class StartGarp:
    vip: str


@dataclass(frozen=True)
class StopGarp:
    vip: str


@dataclass(frozen=True)
class DeleteVip:
    """Delete `vips/<vip>` if it is still this node's at `revision` (release ack or drop)."""

    vip: str
    revision: int
    reason: str


@dataclass(frozen=True)
class PublishNode:
    """Rewrite `nodes/<name>` (health or held VIPs changed)."""


@dataclass(frozen=True)
class KeepaliveNow:
    """A VIP is waiting for a fresher lease deadline than the last keepalive gave."""


@dataclass(frozen=True)
class Regrant:
    """The lease is gone: grant a new one and register again."""


@dataclass(frozen=True)
class Revoke:
    """Stopping: revoke the lease (etcd deletes `nodes/<name>` and this node's `vips/` keys)."""


Action = (
    SetAddress
    | RemoveAddress
    | StartGarp
    | StopGarp
    | DeleteVip
    | PublishNode
    | KeepaliveNow
    | Regrant
    | Revoke
)


@dataclass
class Hysteresis:
    """Healthy after `rise` good samples in a row, unhealthy after `fall` bad ones.

    A node starts unhealthy: it must prove its proxy works before it gets a VIP.
    """

    rise: int
    fall: int
    healthy: bool = False
    streak: int = 0

    def sample(self, ok: bool) -> bool:
        """Record one sample; True when the verdict changed."""
        if ok == self.healthy:
            self.streak = 0
            return False
        self.streak += 1
        if self.streak >= (self.rise if ok else self.fall):
            self.healthy = ok
            self.streak = 0
            return True
        return False


@dataclass
class AgentCore:
    """The state machine of one node agent; every public method returns the actions to take."""

    name: str
    timing: Timing
    health: Hysteresis
    lease_id: int | None = None
    deadline: float = -math.inf
    assignments: dict[str, Assignment] = field(default_factory=dict)
    known_vips: set[str] = field(default_factory=set)
    # vip -> the time by which the kernel will have dropped it without a refresh
    held: dict[str, float] = field(default_factory=dict)
    stopping: bool = False
    fenced: bool = False
    _seen: dict[str, int] = field(default_factory=dict)
    _floor: int = 0  # revision of the last snapshot: older events are already in it
    _deleting: dict[str, int] = field(default_factory=dict)
    _keepalive_asked: bool = False

    # --- lease ---------------------------------------------------------------------------

    def lease_granted(self, lease_id: int, sent_at: float, ttl: float, now: float) -> list[Action]:
        self.lease_id = lease_id
        self.deadline = sent_at + ttl
        self.fenced = False
        self._keepalive_asked = False
        return [PublishNode(), *self._converge(now)]

    def keepalive_ok(self, sent_at: float, ttl: float, now: float) -> list[Action]:
        """A keepalive sent at `sent_at` came back with `ttl` (<= 0: the lease is gone)."""
        if self.lease_id is None or self.stopping:
            return []
        if ttl <= 0:
            return self.lease_lost(now)
        self.deadline = max(self.deadline, sent_at + ttl)
        self.fenced = False
        self._keepalive_asked = False
        actions: list[Action] = []
        for vip in sorted(self.held):
            if self._wanted(vip) and self._may_arm(now):
                self.held[vip] = self._expiry(now)
                actions.append(SetAddress(vip, self.timing.address_lifetime, False, "keepalive"))
        return actions + self._converge(now)

    def keepalive_failed(self, now: float) -> list[Action]:
        self._keepalive_asked = False
        return self.tick(now)

    def lease_lost(self, now: float) -> list[Action]:
        """etcd says the lease is gone: everything bound to it is gone too."""
        actions: list[Action] = []
        for vip in sorted(self.held):
            actions += [RemoveAddress(vip, "lease lost"), StopGarp(vip)]
        self.held.clear()
        old = self.lease_id
        self.assignments = {v: a for v, a in self.assignments.items() if a.lease != old}
        self.lease_id = None
        self.deadline = -math.inf
        self._keepalive_asked = False
        self._deleting.clear()
        return [*actions, Regrant()]

    # --- observations --------------------------------------------------------------------

    def health_sample(self, ok: bool, now: float) -> list[Action]:
        if not self.health.sample(ok):
            return []
        return [PublishNode(), *self._converge(now)]

    def assignments_snapshot(
        self, current: dict[str, Assignment], revision: int, now: float
    ) -> list[Action]:
        """The whole of `vips/` as read at `revision` (the level-triggered path)."""
        if revision < self._floor:
            return []
        self._deleting.clear()  # retry deletes that did not take
        for vip in set(self.assignments) | set(current):
            a = current.get(vip)
            self._apply(vip, a, a.revision if a else revision)
        self._floor = revision
        return self._converge(now)

    def assignment_event(
        self, vip: str, assignment: Assignment | None, revision: int, now: float
    ) -> list[Action]:
        """One watch event: a put (`assignment`) or a delete (None) at `revision`."""
        if revision <= self._floor:
            return []  # already part of the last snapshot
        self._apply(vip, assignment, revision)
        return self._converge(now)

    def kernel_addresses(self, present: set[str], now: float) -> list[Action]:
        """The addresses with a finite lifetime the kernel has on the VIP interface."""
        actions: list[Action] = []
        for vip in sorted(set(self.held) - present):
            del self.held[vip]  # expired, or removed by someone else: converge re-adds if wanted
            actions.append(StopGarp(vip))
        for vip in sorted((present & self.known_vips) - set(self.held)):
            actions.append(RemoveAddress(vip, f"{vip} is present, must be absent"))
        return actions + self._converge(now)

    def address_failed(self, vip: str) -> None:
        """Setting the address failed: it is not held (the next reconcile retries)."""
        self.held.pop(vip, None)

    def tick(self, now: float) -> list[Action]:
        """Self-fencing: remove what the kernel is due to drop because no keepalive re-armed it."""
        actions: list[Action] = []
        for vip, gone_by in sorted(self.held.items()):
            if now >= gone_by - self.timing.kernel_slack:
                del self.held[vip]
                self.fenced = True
                actions += [RemoveAddress(vip, "self-fence: no keepalive success"), StopGarp(vip)]
        if actions:
            actions.append(PublishNode())
        return actions

    def stop(self) -> list[Action]:
        """SIGTERM: drop every address, then revoke (which deletes all keys under the lease)."""
        self.stopping = True
        actions: list[Action] = []
        for vip in sorted(self.held):
            actions += [RemoveAddress(vip, "stopping"), StopGarp(vip)]
        self.held.clear()
        if self.lease_id is not None:
            actions.append(Revoke())
        return actions

    # --- internals -----------------------------------------------------------------------

    def _apply(self, vip: str, assignment: Assignment | None, revision: int) -> None:
        if revision < self._seen.get(vip, 0):
            return  # older than what we already know (a late watch event)
        self._seen[vip] = revision
        self.known_vips.add(vip)
        if assignment is None:
            self.assignments.pop(vip, None)
        else:
            self.assignments[vip] = assignment

    def _mine(self, vip: str) -> Assignment | None:
        a = self.assignments.get(vip)
        if a is None or a.owner != self.name or self.lease_id is None or a.lease != self.lease_id:
            return None
        return a

    def _wanted(self, vip: str) -> bool:
        a = self._mine(vip)
        return a is not None and a.state == ASSIGNED and self.health.healthy and not self.stopping

    def _may_arm(self, now: float) -> bool:
        t = self.timing
        return self.lease_id is not None and self._expiry(now) <= self.deadline - t.fence_margin

    def _expiry(self, now: float) -> float:
        return now + self.timing.address_lifetime + self.timing.kernel_slack

    def _converge(self, now: float) -> list[Action]:
        actions: list[Action] = []
        changed = False
        for vip in sorted(set(self.held) | set(self.assignments)):
            wanted = self._wanted(vip)
            if wanted and vip not in self.held:
                if self._may_arm(now):
                    self.held[vip] = self._expiry(now)
                    reason = f"{vip} is absent, must be present"
                    actions += [SetAddress(vip, self.timing.address_lifetime, True, reason)]
                    actions.append(StartGarp(vip))
                    changed = True
                elif not self._keepalive_asked and self.lease_id is not None:
                    self._keepalive_asked = True
                    actions.append(KeepaliveNow())
            elif not wanted and vip in self.held:
                del self.held[vip]
                actions += [RemoveAddress(vip, self._why_not(vip)), StopGarp(vip)]
                changed = True
            mine = self._mine(vip)
            if (
                mine is not None
                and vip not in self.held
                and self._deleting.get(vip) != mine.revision
            ):
                why: str | None = None
                if mine.state == RELEASING:
                    why = "released"
                elif not self.health.healthy:
                    why = "proxy unhealthy"
                if why is not None:
                    self._deleting[vip] = mine.revision
                    actions.append(DeleteVip(vip, mine.revision, why))
        if changed:
            actions.append(PublishNode())
        return actions

    def _why_not(self, vip: str) -> str:
        a = self.assignments.get(vip)
        if self.stopping:
            return "stopping"
        if a is None:
            return f"{vip} is unassigned, must be absent"
        if a.owner != self.name:
            return f"{vip} belongs to {a.owner}, must be absent"
        if a.lease != self.lease_id:
            return f"{vip} is bound to a lost lease, must be absent"
        if a.state == RELEASING:
            return "releasing"
        return "proxy unhealthy"
