"""The decision core: observed cluster + clock -> actions and one sentence (sans-IO).

`decide(view, now, policy)` imports nothing that does I/O and reads no clock.
It runs in three steps, each seeing what the earlier ones already claimed:

1. releases nobody acknowledged within `release_timeout` go back to `assigned`;
2. requests, oldest first (pause/resume/drain/undrain/move; a move or drain in
   flight is remembered in its own `running` result, so any controller can
   finish it);
3. automatic placement, skipped entirely while paused.

Readiness (backend pools with a server up) moves a VIP only to a node with a
strictly better score, once both scores have held for the hold-down, so a
VIP is never taken from its last candidate: when every node is equally
unready the VIP stays and clients get the proxy's 503. A node that lost
liveness recently is not a candidate unless no other node is. A VIP whose
owner has not listed it as held for a while is released so it can move.
Those durations are measured by the controller (`controller.memory`) and handed
in as `controller.plan.Seen`.

Safety rules every action obeys (the property tests check them):
* a VIP is assigned only when nobody holds it (its key absent or vacated:
  see `controller.vacancy`; never two owners), and only to a registered,
  healthy, undrained node;
* a moved VIP is first marked `releasing`; the new owner is chosen only after
  the old owner acknowledged the release in its node record or lost its lease;
* while paused, only requests and release time-outs produce actions.
"""

from __future__ import annotations

from controller.actions import ClearVip, Decision, DeleteRequest, RestoreVip
from controller.placement import is_eligible, least_loaded, preference, stable
from controller.plan import Plan, Policy, Seen, in_flight
from controller.requests import handle_request
from haproxy_py.cluster.records import Cause, ClusterView, NodeRecord, VipAssignment, vip_order

__all__ = ["Policy", "decide"]


def decide(view: ClusterView, now: float, policy: Policy, seen: Seen | None = None) -> Decision:
    """The actions that move the cluster towards its desired state, and why."""
    settings = view.settings
    if settings is None:
        return Decision((), "waiting for the cluster config to be written")
    plan = Plan(view, settings, now, seen)
    _expire_releases(plan, policy)
    for request in view.requests:
        if request.pending:
            handle_request(plan, request, policy)
    if not plan.settings.paused and plan.settings.mode != "bgp":  # bgp: controller.announce
        _release_unheld(plan)
        if plan.settings.mode == "active-standby":
            _active_standby(plan)
        else:
            _active_active(plan)
    _clear_vacated(plan)
    _prune_requests(plan, policy)
    return Decision(tuple(plan.actions), _sentence(plan))


# -- step 1: releases nobody acknowledged ---------------------------------------------------


def _expire_releases(plan: Plan, policy: Policy) -> None:
    for a in plan.view.vips.values():
        if a.state != "releasing":
            continue
        asked = a.releasing_since if a.releasing_since is not None else a.since
        if plan.now - asked > policy.release_timeout:
            plan.restored.add(a.vip)
            plan.add(
                RestoreVip(a.vip, a.node, a.mod_revision),
                f"{a.node} did not release {a.vip} within {policy.release_timeout:g} s; kept there",
            )
        else:
            plan.busy.add(a.vip)


# -- step 3: automatic placement -------------------------------------------------------------


def _active_standby(plan: Plan) -> None:
    settings, view = plan.settings, plan.view
    group = vip_order(settings.vips)
    if not group:
        return
    _release_removed(plan)
    candidates = plan.candidates()
    holders = {a.node for v in group if (a := plan.assignment(v)) and a.state == "assigned"}
    anchor = next(iter(holders)) if len(holders) == 1 else None
    home = view.nodes.get(anchor) if anchor and is_eligible(view, settings, anchor) else None
    home = home or (candidates[0] if candidates else None)
    for vip in group:
        if not plan.absent(vip):
            continue
        if home is None:
            plan.reasons.append(f"{vip} unowned: no healthy node")
            continue
        plan.assign(vip, home)
    if in_flight(plan, group) or any(plan.absent(v) for v in group):
        return
    assignments = [a for v in group if (a := plan.assignment(v)) is not None]
    owners = {a.node for a in assignments}
    if len(owners) > 1:
        _consolidate(plan, assignments, candidates)
        return
    owner = next(iter(owners)) if owners else None
    if owner is None or owner not in view.nodes:
        return  # its lease will expire (or the key is unreadable); nothing safe to do now
    others = [n for n in candidates if n.name != owner]
    if not is_eligible(view, settings, owner):
        if others:
            cause = _leaving(plan, owner)
            for a in assignments:
                plan.release(a, cause, others[0].name)
        return
    best = candidates[0]
    current = view.nodes[owner]
    if best.name != owner and _readier(plan, best, current):
        for a in assignments:
            plan.release(a, "readiness", best.name)
        return
    if (
        settings.failback
        and best.ready >= current.ready
        and best.priority > current.priority
        and stable(best, plan.now, settings.failback_hold)
        and not any(a.cause == "manual" for a in assignments)
    ):
        for a in assignments:
            plan.release(a, "failback", best.name)


def _consolidate(
    plan: Plan, assignments: list[VipAssignment], candidates: list[NodeRecord]
) -> None:
    """Active-standby VIPs found on several nodes move to the one holding most of them."""
    by_node: dict[str, int] = {}
    for a in assignments:
        by_node[a.node] = by_node.get(a.node, 0) + 1
    usable = sorted(
        (n for n in candidates if n.name in by_node),
        key=lambda n: (-by_node[n.name], preference(n)),
    )
    target = usable[0] if usable else (candidates[0] if candidates else None)
    if target is None:
        return
    for a in assignments:
        if a.node != target.name:
            plan.release(a, "rebalance", target.name)


def _active_active(plan: Plan) -> None:
    settings, view = plan.settings, plan.view
    vips = vip_order(settings.vips)
    _release_removed(plan)
    candidates = plan.candidates()
    for vip in vips:
        if not plan.absent(vip):
            continue
        target = least_loaded(candidates, plan.counts())
        if target is None:
            plan.reasons.append(f"{vip} unowned: no healthy node")
            continue
        plan.assign(vip, target)
    for vip in vips:
        a = plan.assignment(vip)
        if a is None or vip in plan.busy or a.state != "assigned" or a.node not in view.nodes:
            continue
        if not is_eligible(view, settings, a.node) and any(n.name != a.node for n in candidates):
            cause = _leaving(plan, a.node)
            plan.release(a, cause)
        elif a.vip not in plan.busy and (owner := view.nodes.get(a.node)) is not None:
            readier = [n for n in candidates if _readier(plan, n, owner)]
            target = least_loaded(readier, plan.counts())
            if target is not None:
                plan.release(a, "readiness", target.name)
    if settings.failback and not in_flight(plan, vips) and not any(plan.absent(v) for v in vips):
        _rebalance(plan, vips, candidates)


def _rebalance(plan: Plan, vips: list[str], candidates: list[NodeRecord]) -> None:
    """Move one VIP from the busiest node to a stable, emptier one (one step per cycle).

    A VIP an operator placed stays put for `failback_hold` (measured by `Memory`), then
    counts like any other, so the spread comes back after back-to-back failovers.
    """
    counts = plan.counts()
    ready = [n for n in candidates if stable(n, plan.now, plan.settings.failback_hold)]
    if not ready:
        return
    # The busiest node; on a tie the least preferred one gives a VIP away.
    busiest = max(candidates, key=lambda n: (counts.get(n.name, 0), preference(n)))
    emptiest = least_loaded(ready, counts)
    assert emptiest is not None
    if counts.get(busiest.name, 0) - counts.get(emptiest.name, 0) < 2:
        return
    movable = [
        a
        for v in reversed(vips)
        if (a := plan.assignment(v))
        and a.node == busiest.name
        and not (a.cause == "manual" and plan.seen.is_pinned(v))
    ]
    if movable:
        plan.release(movable[0], "rebalance", emptiest.name)


def _leaving(plan: Plan, node: str) -> Cause:
    """Why a VIP leaves a registered node that may no longer hold it."""
    if node in plan.settings.drained:
        return "drain"
    record = plan.view.nodes.get(node)
    return "released" if record is not None and record.stopping else "proxy unhealthy"


def _readier(plan: Plan, candidate: NodeRecord, owner: NodeRecord) -> bool:
    """`candidate` has strictly more pools ready than `owner`, and both scores have held."""
    seen = plan.seen
    return (
        candidate.ready > owner.ready
        and seen.is_settled(candidate.name)
        and seen.is_settled(owner.name)
    )


def _release_unheld(plan: Plan) -> None:
    """A VIP its owner has not listed as held for a while is released, so it can move."""
    for vip in sorted(plan.seen.unheld):
        a = plan.assignment(vip)
        if a is not None and a.state == "assigned" and vip not in plan.busy:
            plan.release(a, "not held")


def _release_removed(plan: Plan) -> None:
    """VIPs no longer in the config are released and not reassigned."""
    for vip, a in plan.view.vips.items():
        if vip not in plan.settings.vips and a.state == "assigned" and vip not in plan.busy:
            plan.release(a, "removed from the config")


# -- housekeeping and wording ----------------------------------------------------------------


def _clear_vacated(plan: Plan) -> None:
    """A vacated key nobody takes this time is deleted: the VIP is plainly unowned then."""
    for vip, a in sorted(plan.view.vacated.items()):
        if vip not in plan.busy:
            plan.add(ClearVip(vip, a.mod_revision), f"{vip} let go of by {a.node}; nobody takes it")


def _prune_requests(plan: Plan, policy: Policy) -> None:
    answered = [r for r in plan.view.requests if not r.pending]
    for request in answered[: max(0, len(answered) - policy.request_history)]:
        plan.actions.append(DeleteRequest(request.id, request.mod_revision))


def _sentence(plan: Plan) -> str:
    if plan.reasons:
        return "; ".join(plan.reasons)
    view, settings = plan.view, plan.settings
    healthy = sum(1 for n in view.nodes.values() if n.healthy)
    if settings.mode == "bgp":  # not one phrase per VIP: 1,000 VIPs cost 10 ms a cycle
        placed = f"{len(settings.vips)} VIPs announced as announce/ says"
    else:
        placed = ", ".join(
            f"{vip} on {view.owner(vip) or 'nobody'}" for vip in vip_order(settings.vips)
        )
    paused = " (paused)" if settings.paused else ""
    return (
        f"nothing to do{paused}: {placed or 'no VIPs configured'}; "
        f"{healthy}/{len(view.nodes)} nodes healthy"
    )
