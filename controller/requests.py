"""Operator requests: pause/resume, drain/undrain, planned moves (pure).

A move or drain that must wait for a release is answered `running` with its
moves listed in the result; each later decision carries it one step further
(assign once the old owner acknowledged) and answers `done` or `failed`.
Because that progress lives in the request's own key, any controller can
finish what another started. The answer is written before the release (the
executor stops at the first failed write), so a leader that dies in between,
or an operator whose wait timed out, never leaves a released VIP whose
target nobody remembers.
"""

from __future__ import annotations

from dataclasses import replace

from controller.actions import AnswerRequest, AssignVip
from controller.placement import eligible, is_eligible, least_loaded, why_not_eligible
from controller.plan import Plan, Policy, in_flight, write_settings
from haproxy_py.cluster.records import (
    Cause,
    Move,
    NodeRecord,
    Request,
    RequestResult,
    ResultStatus,
    vip_order,
)


def _answer(
    plan: Plan,
    request: Request,
    status: ResultStatus,
    message: str,
    policy: Policy,
    moves: tuple[Move, ...] = (),
    gap_ms: float | None = None,
) -> None:
    started = request.result.started if request.result else None
    started = started if started is not None else plan.now
    final = status != "running"
    result = RequestResult(
        status=status,
        message=message,
        started=started,
        finished=plan.now if final else None,
        gap_ms=gap_ms,
        duration_ms=round((plan.now - started) * 1000, 3) if final else None,
        moves=moves,
        controller=policy.controller,
    )
    plan.add(
        AnswerRequest(request.with_result(result), request.mod_revision),
        f"request {request.id} ({request.kind}) {status}: {message}",
    )


def handle_request(plan: Plan, request: Request, policy: Policy) -> None:
    if request.result is not None and request.result.status == "running":
        _progress(plan, request, policy)
        return
    if request.kind in ("pause", "resume"):
        paused = request.kind == "pause"
        if plan.settings.paused == paused:
            _answer(plan, request, "done", f"automatic failover already {request.kind}d", policy)
            return
        write_settings(plan, replace(plan.settings, paused=paused))
        _answer(plan, request, "done", f"automatic failover {request.kind}d", policy)
    elif request.kind == "undrain":
        node = request.node
        if node is None or node not in plan.settings.drained:
            _answer(plan, request, "refused", f"node {node} is not drained", policy)
            return
        drained = tuple(n for n in plan.settings.drained if n != node)
        write_settings(plan, replace(plan.settings, drained=drained))
        _answer(plan, request, "done", f"{node} undrained", policy)
    elif request.kind == "drain":
        _start_drain(plan, request, policy)
    else:
        _start_move(plan, request, policy)


def _start_drain(plan: Plan, request: Request, policy: Policy) -> None:
    node = request.node
    held = plan.view.vips_of(node) if node else ()
    if node is None or (node not in plan.view.nodes and not held):
        known = ", ".join(sorted(plan.view.nodes)) or "none"
        _answer(plan, request, "refused", f"unknown node {node} (registered: {known})", policy)
        return
    if in_flight(plan, list(held)) or _assigned_now(plan, node):
        return  # wait until the VIP's current move (or this cycle's assignment) settles
    already = node in plan.settings.drained
    drained_settings = (
        plan.settings if already else replace(plan.settings, drained=(*plan.settings.drained, node))
    )
    candidates = [n for n in eligible(plan.view, drained_settings) if n.name != node]
    if held and not candidates:
        _answer(
            plan,
            request,
            "refused",
            f"no other healthy, undrained node could take {', '.join(held)} from {node}",
            policy,
        )
        return
    if not already:
        write_settings(plan, drained_settings)
    if not held:
        _answer(plan, request, "done", f"{node} drained; it held no VIPs", policy)
        return
    moves = _targets(plan, list(held), candidates)
    _answer(plan, request, "running", f"draining {node}", policy, moves)
    for move in moves:
        a = plan.assignment(move.vip)
        if a is not None:
            plan.release(a, _cause(request), move.target, request.id)


def _assigned_now(plan: Plan, node: str) -> bool:
    """An earlier request of this cycle gives the node a VIP the view does not show yet."""
    return any(isinstance(a, AssignVip) and a.node == node for a in plan.actions)


def _start_move(plan: Plan, request: Request, policy: Policy) -> None:
    settings = plan.settings
    if request.vip is not None and request.vip not in settings.vips:
        _answer(
            plan,
            request,
            "refused",
            f"unknown VIP {request.vip} (configured: {', '.join(settings.vips) or 'none'})",
            policy,
        )
        return
    if request.vip is None or settings.mode == "active-standby":
        vips = vip_order(settings.vips)  # active-standby VIPs move together
    else:
        vips = [request.vip]
    if not vips:
        _answer(plan, request, "refused", "no VIPs are configured", policy)
        return
    if in_flight(plan, vips):
        return  # another move of these VIPs is under way; try again next cycle
    if request.target is not None:
        problem = why_not_eligible(plan.view, settings, request.target)
        if problem:
            _answer(plan, request, "refused", problem, policy)
            return
        target = plan.view.nodes[request.target]
        refusing = [vip for vip in vips if vip in target.refused]
        if refusing:
            why = f"{target.name} refuses {', '.join(refusing)} (not in its allowed_vips)"
            _answer(plan, request, "refused", why, policy)
            return
        moves = tuple(Move(vip, plan.view.owner(vip), target.name) for vip in vips)
    else:
        owners = {plan.view.owner(vip) for vip in vips} - {None}
        candidates = [n for n in eligible(plan.view, settings) if n.name not in owners]
        if not candidates:
            held = ", ".join(sorted(o for o in owners if o)) or "nobody"
            _answer(
                plan, request, "refused", f"no other healthy node than {held} to move to", policy
            )
            return
        moves = _targets(plan, vips, candidates)
    if any(vip in plan.view.occupied and vip not in plan.view.vips for vip in vips):
        _answer(plan, request, "refused", "a VIP key is unreadable; fix it first", policy)
        return
    pending = tuple(m for m in moves if m.source != m.target)
    if not pending:
        _answer(plan, request, "done", f"already on {moves[0].target}", policy, moves)
        return
    _answer(plan, request, "running", _moves_text(pending), policy, pending)
    for move in pending:
        a = plan.assignment(move.vip)
        if a is None:
            plan.assign(move.vip, plan.view.nodes[move.target], "manual", request.id)
        else:
            plan.release(a, "manual", move.target, request.id)


def _targets(plan: Plan, vips: list[str], candidates: list[NodeRecord]) -> tuple[Move, ...]:
    """Where each VIP goes: all together in active-standby, spread in active-active."""
    if plan.settings.mode == "active-standby":
        return tuple(Move(vip, plan.view.owner(vip), candidates[0].name) for vip in vips)
    counts = plan.counts()
    for vip in vips:  # the VIPs leaving do not count for their current owner
        owner = plan.view.owner(vip)
        if owner:
            counts[owner] = counts.get(owner, 1) - 1
    moves = []
    for vip in vips:
        target = least_loaded(candidates, counts)
        assert target is not None  # callers pass at least one candidate
        counts[target.name] = counts.get(target.name, 0) + 1
        moves.append(Move(vip, plan.view.owner(vip), target.name))
    return tuple(moves)


def _moves_text(moves: tuple[Move, ...]) -> str:
    return "; ".join(f"{m.vip} {m.source or 'unowned'} -> {m.target}" for m in moves)


def _progress(plan: Plan, request: Request, policy: Policy) -> None:
    """Carry a running move or drain one step further, or finish it."""
    assert request.result is not None
    moves = request.result.moves
    waiting = False
    problems: list[str] = []
    for move in moves:
        a = plan.assignment(move.vip)
        if a is not None and a.node == move.target and a.state == "assigned":
            continue
        if move.vip in plan.restored:
            problems.append(f"{move.source} did not release {move.vip} in time")
        elif a is not None and a.state == "releasing" and a.request == request.id:
            waiting = True
            plan.busy.add(move.vip)
        elif (
            a is not None
            and a.state == "assigned"
            and a.node == move.source
            and move.vip not in plan.busy
            and is_eligible(plan.view, plan.settings, move.target)
        ):
            # Answered `running`, but the release after the answer never landed (the
            # leader died in between, or lost a race): ask again.
            plan.release(a, _cause(request), move.target, request.id)
            waiting = True
        elif a is None and move.vip not in plan.view.occupied:
            if is_eligible(plan.view, plan.settings, move.target):
                plan.assign(move.vip, plan.view.nodes[move.target], _cause(request), request.id)
                waiting = True
            else:
                problems.append(f"{move.target} became unavailable before taking {move.vip}")
                fallback = eligible(plan.view, plan.settings)
                if fallback and plan.settings.paused:  # nobody else would place it while paused
                    plan.assign(move.vip, fallback[0], None, request.id)
        elif a is not None and a.state == "assigned" and a.node == move.source:
            problems.append(f"{move.target} became unavailable before {move.vip} was released")
        else:
            owner = a.node if a else "an unreadable key"
            problems.append(f"{move.vip} went to {owner} meanwhile")
    if waiting and not problems:
        return
    if problems:
        _answer(plan, request, "failed", "; ".join(problems), policy, moves)
        return
    gaps = [e.gap_ms for e in plan.view.events if e.request == request.id and e.gap_ms is not None]
    _answer(
        plan,
        request,
        "done",
        _moves_text(moves) if moves else "nothing to move",
        policy,
        moves,
        gap_ms=max(gaps) if gaps else None,
    )


def _cause(request: Request) -> Cause:
    return "drain" if request.kind == "drain" else "manual"
