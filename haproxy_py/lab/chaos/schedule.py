"""The fault schedule: a pure function of the seed, so a run can be replayed exactly.

Faults come in rounds; each round is a shuffled permutation of every kind, so a
schedule of N >= len(KINDS) faults holds every kind at least once and none
twice more often than another. Each fault names its target (a node, a VIP or
nothing) and how long it is held before it is healed.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

# kind -> what it targets: "node", "vip" or "" (the cluster as a whole)
KINDS: dict[str, str] = {
    "kill-node": "node",
    "term-agent": "node",
    "kill-agent": "node",
    "term-proxy": "node",
    "kill-proxy": "node",
    "term-controller": "node",
    "kill-controller": "node",
    "freeze-agent": "node",
    "freeze-proxy": "node",
    "partition-etcd": "node",
    "partition-peers": "node",
    "partition-both": "node",
    "etcd-member": "",
    "etcd-leader": "",
    "etcd-all": "",
    "backends-down": "",
    "address-churn": "node",
    "recreate-link": "node",
    "failover": "vip",
    "drain": "node",
    "pause": "",
    "reload-proxy": "node",
}
HOLD = (0.5, 3.0)  # seconds a fault is held before it is healed, drawn uniformly


class ScheduleError(ValueError):
    pass


@dataclass(frozen=True)
class Fault:
    index: int
    kind: str
    target: str  # a node name, a VIP, or "" for the cluster
    hold: float  # seconds

    def label(self) -> str:
        return f"#{self.index} {self.kind}" + (f" {self.target}" if self.target else "")


def plan(
    seed: int,
    count: int,
    nodes: Sequence[str],
    vips: Sequence[str],
    kinds: Sequence[str] = tuple(KINDS),
) -> list[Fault]:
    """`count` faults drawn from `seed`: rounds of every kind in a random order."""
    unknown = [k for k in kinds if k not in KINDS]
    if unknown:
        raise ScheduleError(f"unknown fault kind {unknown[0]!r}: choose from {', '.join(KINDS)}")
    if not kinds or not nodes or not vips:
        raise ScheduleError("a schedule needs at least one fault kind, node and VIP")
    rng = random.Random(seed)
    faults: list[Fault] = []
    while len(faults) < count:
        round_ = list(kinds)
        rng.shuffle(round_)
        for kind in round_[: count - len(faults)]:
            aim = KINDS[kind]
            target = rng.choice(list(nodes)) if aim == "node" else ""
            target = rng.choice(list(vips)) if aim == "vip" else target
            hold = round(rng.uniform(*HOLD), 2)
            faults.append(Fault(len(faults) + 1, kind, target, hold))
    return faults
