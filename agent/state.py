"""The agent's pure decision core: which VIP addresses this node may hold, and when.

No I/O and no clock: the daemon feeds it what it observed (keepalive results,
`vips/` assignments, proxy health samples, the kernel's addresses, the time)
and executes the actions it returns, in order. Keeping it pure lets tests walk
it through every interleaving, and lets the three safety rules be checked as
properties:

* an address is only ever armed within `rearm_window` of the *send* of the
  freshest successful keepalive, with a fence that falls (kernel slack
  included) no later than `lease deadline - fence_margin` (`agent.arming`);
* an address already held is re-armed only after a new keepalive success, or a
  failsafe grant (`agent.failsafe`) whose promises outlast the new lifetime; while
  this node has promised a failsafe holder to arm nothing, it adds no address;
* with `Timing.lapse`, the lease counts as lost once `lease_ttl` has passed since the
  freshest renewed send: a keepalive answered later renews nothing, and no failsafe
  grant re-arms past that point;
* when the proxy stops being live (its admin API refuses or stops answering,
  or it drains) every VIP is removed in the same step and acknowledged as let
  go, so the controller moves them at once;
* a release is acknowledged (`AckRelease`: the node record's `released` names
  the assignment's revision; agents cannot write `vips/`), and the lease revoked
  at stop, only once a kernel dump shows the address absent, or its lifetime
  has provably run out; an acknowledged assignment is never held again;
* an address outside the node's own allow-list is never set, whatever
  `vips/` says: the assignment is refused (listed in the node record) and
  acknowledged at once so the controller places the VIP elsewhere.

Health here is liveness only. Readiness (backend pools with a server up) is
published for the controller, which alone decides whether moving helps.

A VIP is wanted when `vips/<vip>` names this node, is `assigned`, names
this node's *current* lease (an assignment left from a lost lease is stale),
is allowed by the node's own list, was not acknowledged as let go,
the proxy is live, the agent is not stopping, and the address could be set
within one address lifetime of the first failure (else it is given up, listed
as unheld in the node record, so the controller can move it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from agent.actions import (
    AckRelease,
    Action,
    KeepaliveNow,
    PublishNode,
    Refused,
    Regrant,
    RemoveAddress,
    Revoke,
    SetAddress,
    StartGarp,
    StopGarp,
)
from agent.arming import LeaseClock
from agent.hysteresis import Hysteresis
from haproxy_py.cluster.allowlist import AllowList
from haproxy_py.cluster.timing import Timing

ASSIGNED = "assigned"
RELEASING = "releasing"


# Causes of a planned move: the previous owner lets go cleanly and closes its clients' connections
# (1001) once this node holds the VIP, so this node keeps a grace period for those connections.
# Not "returned": back on the node that had it, whose connections are its own and must flow.
PLANNED = frozenset({"manual", "drain", "released", "failback", "rebalance", "readiness"})
MAX_REFUSED = 16  # refused VIPs listed in the node record, at most (it stays small)
LAPSED = "lease lapsed: no keepalive renewed within lease_ttl"


@dataclass(frozen=True)
class Assignment:
    """What `vips/<vip>` says: owner, state, the lease it is bound to, its mod revision,
    and why it came here."""

    owner: str
    state: str
    lease: int
    revision: int
    cause: str = "initial"


@dataclass
class AgentCore:
    """The state machine of one node agent; every public method returns the actions to take."""

    name: str
    timing: Timing
    health: Hysteresis
    allowed: AllowList  # the node's own list: nothing outside it is ever held
    lease_id: int | None = None
    assignments: dict[str, Assignment] = field(default_factory=dict)
    known_vips: set[str] = field(default_factory=set)
    # vip -> the time by which the kernel will have dropped it without a refresh
    held: dict[str, float] = field(default_factory=dict)
    stopping: bool = False
    fenced: bool = False
    # (pools with a server up, pools): published, never acted on here
    readiness: tuple[int, int] = (0, 0)
    # vip -> revision of the assignment given up because the address could not be set
    given_up: dict[str, int] = field(default_factory=dict)
    _seen: dict[str, int] = field(default_factory=dict)
    _floor: int = 0  # revision of the last snapshot: older events are already in it
    # vip -> revision of the assignment acknowledged as let go (published in the node record)
    acked: dict[str, int] = field(default_factory=dict)
    refused: set[str] = field(default_factory=set)  # assigned here, not allowed (kept, bounded)
    # vip -> when the kernel drops it anyway: removed, but no dump has shown it gone yet
    _removing: dict[str, float] = field(default_factory=dict)
    _failing: dict[str, float] = field(default_factory=dict)  # vip -> first failed set
    _revoked: bool = False
    _keepalive_asked: bool = False
    # The failsafe (`agent.failsafe`): no new address before this (a promise to a peer that
    # holds VIPs through an etcd outage), and held ones re-armed while their fence falls
    # `fence_margin` before `failsafe_until` (what every peer promised).
    arm_hold: float = -math.inf
    failsafe_until: float = -math.inf
    clock: LeaseClock = field(init=False)

    def __post_init__(self) -> None:
        self.clock = LeaseClock(self.timing)

    @property
    def busy(self) -> bool:
        """Something only the clock can finish: addresses held or not yet confirmed gone."""
        return bool(self.held or self._removing)

    # --- lease ---------------------------------------------------------------------------

    def lease_granted(self, lease_id: int, sent_at: float, ttl: float, now: float) -> list[Action]:
        self.lease_id = lease_id
        self.clock.lost()
        self.clock.renewed(sent_at, ttl)
        self.fenced = False
        self._keepalive_asked = False
        return [PublishNode(), *self._converge(now)]

    def keepalive_ok(self, sent_at: float, ttl: float, now: float) -> list[Action]:
        """A keepalive sent at `sent_at` came back with `ttl` (<= 0: the lease is gone)."""
        if self.lease_id is None or self.stopping:
            return []
        if ttl <= 0:
            return self.lease_lost(now)
        if self.clock.lapsed(now):
            return self.lease_lost(now, LAPSED)
        self.clock.renewed(sent_at, ttl)
        self.fenced = False
        self._keepalive_asked = False
        actions: list[Action] = []
        for vip in sorted(self.held):
            if not self._wanted(vip):
                continue
            if self._may_arm(now):
                self.held[vip] = self.clock.expiry(now)
                actions.append(SetAddress(vip, self.timing.address_lifetime, False, "keepalive"))
            elif not self._keepalive_asked:  # answered too late to arm: ask again at once
                self._keepalive_asked = True
                actions.append(KeepaliveNow())
        return actions + self._converge(now)

    def failsafe_refresh(
        self, sent: float, promise: float, vips: frozenset[str], now: float
    ) -> list[Action]:
        """Every peer vouched in a round sent at `sent`, promising to arm nothing for `promise`
        s: re-arm the VIPs asked about that are still held and wanted, never a new one."""
        self.failsafe_until = max(self.failsafe_until, sent + promise)
        until = min(self.failsafe_until, self.clock.deadline if self.timing.lapse else math.inf)
        actions: list[Action] = []
        for vip in sorted(vips & set(self.held)):
            if self._wanted(vip) and self.clock.expiry(now) <= until - self.timing.fence_margin:
                self.held[vip] = self.clock.expiry(now)
                actions.append(SetAddress(vip, self.timing.address_lifetime, False, "failsafe"))
        return actions

    @property
    def holding(self) -> set[str]:
        """Addresses held, or removed and not yet shown gone: what a peer asking must not hold."""
        return set(self.held) | set(self._removing)

    def converge(self, now: float) -> list[Action]:
        """Look again (a promise to a peer has ended: a VIP may be added now)."""
        return self._converge(now)

    def keepalive_failed(self, now: float) -> list[Action]:
        self._keepalive_asked = False
        return self.tick(now)

    def lease_lost(self, now: float, why: str = "lease lost") -> list[Action]:
        """etcd says the lease is gone, or it lapsed: everything bound to it is gone too."""
        actions = self._drop_all(why, lost=True)
        old = self.lease_id
        self.assignments = {v: a for v, a in self.assignments.items() if a.lease != old}
        self.lease_id = None
        self.clock.lost()
        self._keepalive_asked = False
        self.acked.clear()
        # a lapsed lease may live on in etcd: its fences fell before the lapse, so revoking
        # it takes nothing from anyone and spares its VIPs the controllers' proof
        return [*actions, Regrant(why, (old or 0) if why == LAPSED else 0)]

    # --- observations --------------------------------------------------------------------

    def health_sample(self, ok: bool, now: float, fast: bool = False) -> list[Action]:
        """One liveness probe; `fast` for a failure that needs no confirmation."""
        if not self.health.sample(ok, fast):
            return []
        return [PublishNode(), *self._converge(now)]

    def readiness_sample(self, ready: int, pools: int) -> list[Action]:
        """Pools with a server up, of all pools: published when it changes."""
        if (ready, pools) == self.readiness:
            return []
        self.readiness = (ready, pools)
        return [PublishNode()]

    def assignments_snapshot(
        self, current: dict[str, Assignment], revision: int, now: float
    ) -> list[Action]:
        """The whole of `vips/` as read at `revision` (the level-triggered path)."""
        if revision < self._floor:
            return []
        first = self._floor == 0
        for vip in set(self.assignments) | set(current):
            a = current.get(vip)
            self._apply(vip, a, a.revision if a else revision)
        self._floor = revision
        actions = self._converge(now)
        if first:  # an earlier agent here (killed) may have left its clients on any of them
            reason = "not held since the agent started"
            gone = sorted(
                v for v in current if not (v in self.held or v in self._removing or self._mine(v))
            )
            actions += [RemoveAddress(v, reason, lost=True) for v in gone]
        return actions

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
        for vip in sorted(set(self._removing) - present):
            del self._removing[vip]  # confirmed gone: now it may be acknowledged
        for vip in sorted(set(self.held) - present):
            del self.held[vip]  # expired, or removed by someone else: converge re-adds if wanted
            actions.append(StopGarp(vip))
        for vip in sorted((present & self.known_vips) - set(self.held)):
            lost = vip not in self._removing  # not one this agent let go of
            actions.append(RemoveAddress(vip, f"{vip} is present, must be absent", lost=lost))
            self._removing.setdefault(vip, self.clock.expiry(now))
        return actions + self._converge(now)

    def address_failed(self, vip: str, now: float) -> None:
        """Setting the address failed: it is not held (the next keepalive or reconcile retries)."""
        self.held.pop(vip, None)
        self._failing.setdefault(vip, now)

    def address_set(self, vip: str) -> None:
        """The kernel took the address: whatever failed before is over."""
        self._failing.pop(vip, None)

    def fence(self, now: float) -> list[Action]:
        """Self-fencing: remove what the kernel is due to drop because no keepalive re-armed it.

        Cheap and idempotent, so the daemon runs it before every step: after a stall
        (SIGSTOP, a VM pause) nothing is acted on before the deadlines that passed.
        """
        actions: list[Action] = []
        for vip, gone_by in sorted(self.held.items()):
            if now >= gone_by - self.timing.kernel_slack:
                del self.held[vip]
                self._removing[vip] = gone_by
                self.fenced = True
                reason = "self-fence: no keepalive success"
                actions += [RemoveAddress(vip, reason, fenced=True, lost=True), StopGarp(vip)]
        if actions:
            actions.append(PublishNode())
        return actions

    def tick(self, now: float) -> list[Action]:
        """The lapse, the fence, then forget removals whose lifetime has run out."""
        if self.lease_id is not None and not self.stopping and self.clock.lapsed(now):
            return self.lease_lost(now, LAPSED)
        actions = self.fence(now)
        expired = [vip for vip, gone_by in self._removing.items() if now >= gone_by]
        for vip in expired:
            del self._removing[vip]  # its lifetime has run out: the kernel has dropped it
        if expired:
            actions += self._converge(now)
        return actions

    def stop(self, now: float) -> list[Action]:
        """SIGTERM: drop every address and say so (the node record says `stopping`, so no
        VIP comes back); once the kernel shows them gone, release every VIP key (the
        controller reassigns them as a planned move), then revoke."""
        self.stopping = True
        actions = [*self._drop_all("stopping"), PublishNode()]
        return actions + self._converge(now)

    # --- internals -----------------------------------------------------------------------

    def _drop_all(self, reason: str, lost: bool = False) -> list[Action]:
        actions: list[Action] = []
        for vip, gone_by in sorted(self.held.items()):
            actions += [RemoveAddress(vip, reason, lost=lost), StopGarp(vip)]
            self._removing[vip] = gone_by
        self.held.clear()
        return actions

    def _finish_stop(self) -> list[Action]:
        if not self.stopping or self._removing or self._revoked or self._still_mine():
            return []
        self._revoked = True
        return [Revoke()]

    def _still_mine(self) -> bool:
        """An assignment of ours the controller has not yet given to anyone else."""
        return any(self._mine(vip) is not None for vip in self.assignments)

    def _apply(self, vip: str, assignment: Assignment | None, revision: int) -> None:
        if revision < self._seen.get(vip, 0):
            return  # older than what we already know (a late watch event)
        self._seen[vip] = revision
        if self.allowed.allows(vip):
            self.known_vips.add(vip)  # (only ours may be removed from the interface)
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
        return (
            a is not None
            and a.state == ASSIGNED
            and self.health.healthy
            and not self.stopping
            and self.given_up.get(vip) != a.revision
            and self.acked.get(vip) != a.revision
            and self.allowed.allows(vip)
        )

    def _cannot_hold(self, vip: str, now: float) -> bool:
        """Setting the address has failed for longer than an address lifetime."""
        since = self._failing.get(vip)
        return since is not None and now - since > self.timing.address_lifetime

    def _may_arm(self, now: float) -> bool:
        return self.lease_id is not None and self.clock.may_arm(now)

    def _converge(self, now: float) -> list[Action]:
        actions: list[Action] = []
        changed = False
        # a given-up VIP is listed as unheld only while that assignment lasts
        self.given_up = {
            vip: rev
            for vip, rev in self.given_up.items()
            if (a := self._mine(vip)) is not None and a.revision == rev
        }
        # an acknowledgement is published only while the assignment it names lasts
        self.acked = {
            vip: rev
            for vip, rev in self.acked.items()
            if (a := self._mine(vip)) is not None and a.revision == rev
        }
        for vip in sorted(set(self.held) | set(self.assignments)):
            wanted = self._wanted(vip)
            mine = self._mine(vip)
            refused = mine is not None and not self.allowed.allows(vip)
            if refused and vip not in self.refused and len(self.refused) < MAX_REFUSED:
                self.refused.add(vip)
                actions.append(Refused(vip))
                changed = True
            if wanted and mine is not None and self._cannot_hold(vip, now):
                self.given_up[vip] = mine.revision
                del self._failing[vip]
                wanted, changed = False, True
            if wanted and vip not in self.held:
                if now < self.arm_hold:
                    pass  # promised a failsafe holder to arm nothing yet
                elif self._may_arm(now):
                    self.held[vip] = self.clock.expiry(now)
                    reason = f"{vip} is absent, must be present"
                    grace = mine is not None and mine.cause in PLANNED
                    lifetime = self.timing.address_lifetime
                    actions += [SetAddress(vip, lifetime, True, reason, grace)]
                    actions.append(StartGarp(vip))
                    changed = True
                elif not self._keepalive_asked and self.lease_id is not None:
                    self._keepalive_asked = True
                    actions.append(KeepaliveNow())
            elif not wanted and vip in self.held:
                self._removing[vip] = self.held.pop(vip)
                # Taken from this node without a release of its own (the key deleted with a
                # revoked lease, or given on): nothing else tells the proxy's clients to go.
                lost = mine is None
                actions += [RemoveAddress(vip, self._why_not(vip), lost=lost), StopGarp(vip)]
                changed = True
            if (
                mine is not None
                and vip not in self.held
                and vip not in self._removing
                and self.acked.get(vip) != mine.revision
            ):
                why: str | None = None
                if refused:
                    why = "not in this node's allowed_vips"
                elif mine.state == RELEASING:
                    why = "released"
                elif not self.health.healthy:
                    why = "proxy unhealthy"
                elif self.given_up.get(vip) == mine.revision:
                    why = "cannot hold the address"
                elif self.stopping:
                    why = "stopping"
                if why is not None:
                    self.acked[vip] = mine.revision
                    actions.append(AckRelease(vip, mine.revision, why))
                    changed = True
        if changed:
            actions.append(PublishNode())
        return actions + self._finish_stop()

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
        if self.acked.get(vip) == a.revision:
            return f"{vip} was let go, must be absent"
        if a.state == RELEASING:
            return "releasing"
        if self.given_up.get(vip) == a.revision:
            return "cannot hold the address"
        return "proxy unhealthy"
