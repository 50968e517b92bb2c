"""Who may hold VIPs and in which order: pure helpers shared by the decision rules.

A node is eligible when it is registered under a lease, its proxy is live
and it is not drained. Candidates are ordered by readiness first (more backend
pools with a server up), then by preference: highest priority first, then
name, so every controller computes the same answer from the same view.
"""

from __future__ import annotations

from collections.abc import Mapping

from haproxy_py.cluster.records import ClusterPolicy, ClusterView, NodeRecord


def preference(node: NodeRecord) -> tuple[int, str]:
    return (-node.priority, node.name)


def rank(node: NodeRecord) -> tuple[int, int, str]:
    """Sort key: the readiest first, then by preference."""
    return (-node.ready, *preference(node))


def eligible(view: ClusterView, settings: ClusterPolicy) -> list[NodeRecord]:
    """Registered, live, undrained nodes, best first."""
    nodes = [n for n in view.nodes.values() if is_eligible(view, settings, n.name)]
    return sorted(nodes, key=rank)


def not_held_down(candidates: list[NodeRecord], held_down: Mapping[str, float]) -> list[NodeRecord]:
    """Candidates without those held down; when every one is, the longest held first."""
    rested = [n for n in candidates if n.name not in held_down]
    return rested or sorted(candidates, key=lambda n: held_down[n.name])


def is_eligible(view: ClusterView, settings: ClusterPolicy, name: str) -> bool:
    return why_not_eligible(view, settings, name) is None


def stable(node: NodeRecord, now: float, hold: float) -> bool:
    """Healthy for at least `hold` seconds (the failback hold-down)."""
    return node.healthy and node.healthy_since is not None and now - node.healthy_since >= hold


def least_loaded(candidates: list[NodeRecord], counts: Mapping[str, int]) -> NodeRecord | None:
    """The candidate holding the fewest VIPs; ties go to preference order."""
    if not candidates:
        return None
    return min(candidates, key=lambda n: (counts.get(n.name, 0), preference(n)))


def why_not_eligible(view: ClusterView, settings: ClusterPolicy, name: str) -> str | None:
    """Why `name` cannot take a VIP, as a phrase; None when it can."""
    node = view.nodes.get(name)
    if node is None:
        known = ", ".join(sorted(view.nodes)) or "none"
        return f"unknown node {name} (registered: {known})"
    if not node.lease:
        # A VIP key is bound to its owner's lease; without one it would never expire.
        return f"target {name} is not registered under a lease"
    if not node.healthy:
        return f"target {name} is unhealthy"
    if node.stopping:
        return f"target {name} is stopping"
    if name in settings.drained:
        return f"target {name} is drained (undrain it first)"
    return None
