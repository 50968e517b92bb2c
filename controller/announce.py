"""BGP mode: which nodes may announce which VIP (pure: no I/O, no clock).

In BGP mode every node that can serve a VIP announces it and the router
spreads connections over them; the controller only says who may. Rules:

1. A candidate for a VIP is registered (its lease lives), live, not stopping,
   not drained by an operator, and allowed for that VIP (`Policy.allowed`;
   no entry: every node).
2. Of the candidates, those whose every backend pool has a server up
   announce.
3. A backend outage shared by every candidate withdraws nobody: when no
   candidate is fully ready, the candidates with the best readiness score
   announce (all of them when every score is 0), so clients get the proxy's
   503, never a black hole.
4. Fewer announcers than `Policy.min_announcers`: the best other candidates
   (readiness, then priority, then name) are added up to it.
5. While the cluster is paused (maintenance), the previous answer stands.
6. A node whose lease ended keeps its answer (`kept`), narrowed to what rule 1
   still allows it without a lease: configured, allowed, not drained. It
   announces nothing meanwhile (an agent announces only while its lease
   provably lives: `agent.bgpside.fenced`); back under a new lease it goes on
   with that answer, as a restarted agent does, until the cycle its record
   wakes decides again. So a death and a return cost etcd the record's two
   revisions and the controller no write when the answer is the same.

Invariants (tests/unit/controller/test_announce.py checks them for any
cluster): announcers are candidates; a VIP with a candidate has an announcer;
with a fully ready candidate, nobody less ready announces beyond the minimum.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from haproxy_py.cluster.records import ClusterPolicy, NodeRecord


@dataclass(frozen=True)
class Policy:
    min_announcers: int = 1
    allowed: Mapping[str, frozenset[str]] = field(default_factory=dict)  # VIP -> nodes


@dataclass(frozen=True)
class Announcements:
    """VIP -> the nodes that may announce it, and one sentence per VIP saying why."""

    nodes: Mapping[str, frozenset[str]]
    reasons: Mapping[str, str]


def candidates(
    vip: str, nodes: Mapping[str, NodeRecord], settings: ClusterPolicy, policy: Policy
) -> list[NodeRecord]:
    """Rule 1."""
    allowed = policy.allowed.get(vip)
    return [
        n
        for n in nodes.values()
        if n.healthy
        and not n.stopping
        and n.name not in settings.drained
        and (allowed is None or n.name in allowed)
    ]


def kept(
    node: str, vips: tuple[str, ...], settings: ClusterPolicy, policy: Policy
) -> tuple[str, ...]:
    """Rule 6: what a node that is not registered keeps of its answer `vips`."""
    if settings.paused:
        return vips
    if node in settings.drained:
        return ()
    configured = frozenset(settings.vips)
    if not policy.allowed and configured.issuperset(vips):
        return vips  # the usual case, without a step per VIP
    return tuple(
        v
        for v in vips
        if v in configured and ((allowed := policy.allowed.get(v)) is None or node in allowed)
    )


def _fully_ready(node: NodeRecord) -> bool:
    return node.pools > 0 and node.ready == node.pools


def _rank(node: NodeRecord) -> tuple[int, int, str]:
    return (-node.ready, -node.priority, node.name)


def for_vip(
    vip: str, nodes: Mapping[str, NodeRecord], settings: ClusterPolicy, policy: Policy
) -> tuple[frozenset[str], str]:
    """Rules 1-4 for one VIP."""
    pool = sorted(candidates(vip, nodes, settings, policy), key=_rank)
    if not pool:
        return frozenset(), "no node is live, undrained and allowed: nobody can announce"
    chosen = [n for n in pool if _fully_ready(n)]
    reason = f"{len(chosen)} of {len(pool)} candidates have every backend pool up"
    if not chosen:
        best = pool[0].ready
        chosen = [n for n in pool if n.ready == best]
        reason = (
            f"no candidate has every backend pool up (best {best}): the best {len(chosen)} "
            "keep announcing, clients get 503 rather than no route"
        )
    if len(chosen) < policy.min_announcers:
        names = {n.name for n in chosen}  # not `n not in chosen`: N x N record compares
        extra = [n for n in pool if n.name not in names][: policy.min_announcers - len(chosen)]
        if extra:
            chosen += extra
            reason += (
                f"; {len(extra)} less ready added to reach the minimum {policy.min_announcers}"
            )
    return frozenset(n.name for n in chosen), reason


def plan(
    vips: tuple[str, ...],
    nodes: Mapping[str, NodeRecord],
    settings: ClusterPolicy,
    policy: Policy,
    previous: Mapping[str, frozenset[str]],
) -> Announcements:
    """Every VIP's announcers (rule 5: paused, `previous` stands)."""
    if settings.paused:
        return Announcements(
            {v: previous.get(v, frozenset()) for v in vips},
            {v: "paused: announcers unchanged" for v in vips},
        )
    # VIPs with the same allowed nodes have the same answer: decided once per such group, so
    # a cycle costs one ranking per group, not one per VIP (1,000 VIPs x 100 nodes)
    by_group: dict[frozenset[str] | None, tuple[frozenset[str], str]] = {}
    decided = {}
    for v in vips:
        group = policy.allowed.get(v)
        if group not in by_group:
            by_group[group] = for_vip(v, nodes, settings, policy)
        decided[v] = by_group[group]
    return Announcements(
        {v: d[0] for v, d in decided.items()}, {v: d[1] for v, d in decided.items()}
    )
