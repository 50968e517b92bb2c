"""The working state of one decision and the rules every step shares (pure).

`Plan` collects actions and the phrases of the logged sentence, and tracks
which VIPs some action or in-flight request already claimed this cycle, so a
later step never acts on the same VIP twice.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from controller.actions import Action, AssignVip, ClearVip, ReleaseVip, RestoreVip, WriteSettings
from controller.placement import eligible, not_held_down, preference
from haproxy_py.cluster.records import Cause, ClusterPolicy, ClusterView, NodeRecord, VipAssignment


@dataclass(frozen=True)
class Seen:
    """The hold-down verdicts for one decision (pure input to `decide`)."""

    # node -> when its hold-down began: it lost liveness, or registered again under a new
    # lease (its agent restarted or lost its lease), less than `health_hold` ago
    held_down: Mapping[str, float] = field(default_factory=dict)
    # nodes whose readiness score has stayed the same for at least `ready_hold`
    settled: frozenset[str] | None = None  # None: every node counts as settled
    # VIPs assigned to a registered node that has not listed them as held for `unheld_limit`
    unheld: frozenset[str] = frozenset()
    # VIPs an operator moved less than `failback_hold` ago: rebalancing leaves them alone
    pinned: frozenset[str] | None = None  # None: every manual placement counts as pinned

    def is_pinned(self, vip: str) -> bool:
        return self.pinned is None or vip in self.pinned

    def is_settled(self, node: str) -> bool:
        return self.settled is None or node in self.settled


@dataclass(frozen=True)
class Policy:
    """Controller knobs that are not cluster settings."""

    release_timeout: float = 5.0
    request_history: int = 100
    controller: str | None = None


class Plan:
    """Working state of one decision: what is already claimed, and the sentence parts."""

    def __init__(
        self, view: ClusterView, settings: ClusterPolicy, now: float, seen: Seen | None = None
    ) -> None:
        self.view = view
        self.settings = settings
        self.now = now
        self.seen = seen or Seen()
        self.actions: list[Action] = []
        self.reasons: list[str] = []
        self.busy: set[str] = set()  # VIPs some action or in-flight request already owns
        self.restored: set[str] = set()

    def add(self, action: Action, reason: str | None = None) -> None:
        self.actions.append(action)
        if isinstance(action, AssignVip | ClearVip | ReleaseVip | RestoreVip):
            self.busy.add(action.vip)
        if reason:
            self.reasons.append(reason)

    def candidates(self) -> list[NodeRecord]:
        """Who may get a VIP automatically, best first (hold-downs applied)."""
        return not_held_down(eligible(self.view, self.settings), self.seen.held_down)

    def assignment(self, vip: str) -> VipAssignment | None:
        return self.view.vips.get(vip)

    def absent(self, vip: str) -> bool:
        return vip not in self.view.occupied and vip not in self.busy

    def counts(self) -> dict[str, int]:
        """VIPs per node, counting planned assignments and in-flight move targets."""
        counts: dict[str, int] = {}
        for a in self.view.vips.values():
            node = a.move_to if a.state == "releasing" and a.move_to else a.node
            counts[node] = counts.get(node, 0) + 1
        for action in self.actions:
            if isinstance(action, AssignVip):
                counts[action.node] = counts.get(action.node, 0) + 1
        return counts

    def assign(
        self, vip: str, node: NodeRecord, cause: Cause | None = None, request: str | None = None
    ) -> None:
        if vip in node.refused:  # not on that node's own allow-list: it would never hold it
            others = [n for n in self.candidates() if vip not in n.refused]
            if not others:
                self.reasons.append(f"{vip} unowned: {node.name} refuses it (allowed_vips)")
                return
            node = others[0]
        source = last_owner(self.view, vip)
        cause = cause or cause_of(self.view, self.settings, source, node)
        vacated = self.view.vacated.get(vip)
        replaces = vacated.mod_revision if vacated else 0
        action = AssignVip(vip, node.name, node.lease, cause, source, request, replaces)
        self.add(action, f"assign {vip} to {node.name} ({cause})")

    def release(
        self, a: VipAssignment, cause: Cause, move_to: str | None = None, request: str | None = None
    ) -> None:
        where = f" for {move_to}" if move_to else ""
        action = ReleaseVip(a.vip, a.node, cause, a.mod_revision, move_to, request)
        self.add(action, f"release {a.vip} from {a.node}{where} ({cause})")


def write_settings(plan: Plan, settings: ClusterPolicy) -> None:
    """New settings for the rest of this decision and one write of them.

    Several requests in one decision build on each other; only the last write is needed.
    """
    plan.actions = [a for a in plan.actions if not isinstance(a, WriteSettings)]
    plan.settings = settings
    plan.actions.append(WriteSettings(settings, settings.mod_revision))


def in_flight(plan: Plan, vips: list[str]) -> bool:
    """Some of these VIPs are already being moved (releasing, claimed this cycle, or waiting
    out the embargo after their owner's lease was revoked)."""
    return any(vip in plan.busy or vip in plan.view.embargoed for vip in vips)


def last_owner(view: ClusterView, vip: str) -> str | None:
    """The current owner, else the last one the event history names."""
    a = view.vips.get(vip) or view.vacated.get(vip)
    if a is not None:
        return a.node
    event = view.last_event(vip)
    return event.target if event else None


def cause_of(
    view: ClusterView, settings: ClusterPolicy, source: str | None, target: NodeRecord
) -> Cause:
    """Why a VIP lands on `target`, judged from what became of its last owner."""
    if source is None:
        return "initial"
    if source == target.name:
        return "returned"
    previous = view.nodes.get(source)
    if previous is None:
        return "node lost"
    if not previous.healthy:
        return "proxy unhealthy"
    if source in settings.drained:
        return "drain"
    if settings.failback and preference(target) < preference(previous):
        return "failback" if settings.mode == "active-standby" else "rebalance"
    return "released"
