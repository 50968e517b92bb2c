"""What the controller saw over time, on its own monotonic clock.

The decision core is pure and reads no clock; the hold-downs it applies need
to know for how long something has been true. That is measured here, by the
controller that observes it, from when it first saw it, never by comparing
timestamps written by other hosts (their wall clocks may be skewed). A
controller that has just started (or just won the election) knows nothing yet,
so it counts from its first observation: holds only get longer, never shorter.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from controller.plan import Seen
from haproxy_py.cluster.records import ClusterView


@dataclass
class Memory:
    """Updated once per cycle from the view; `observe` returns the verdicts."""

    health_hold: float = 10.0
    ready_hold: float = 5.0
    unheld_limit: float = 3.0
    clock: Callable[[], float] = time.monotonic
    _live: dict[str, bool] = field(default_factory=dict)
    _lease: dict[str, int] = field(default_factory=dict)
    _down_at: dict[str, float] = field(default_factory=dict)
    _score: dict[str, tuple[int, int]] = field(default_factory=dict)
    _score_at: dict[str, float] = field(default_factory=dict)
    _unheld_at: dict[tuple[str, int], float] = field(default_factory=dict)
    _manual_at: dict[tuple[str, int], float] = field(default_factory=dict)

    def observe(self, view: ClusterView) -> Seen:
        now = self.clock()
        for name, node in view.nodes.items():
            if not node.healthy and (self._live.get(name) or name in self._down_at):
                self._down_at[name] = now  # counts from the last instant it was seen down
            if name in self._lease and node.lease != self._lease[name]:
                self._down_at[name] = now  # registered again: its VIPs went with the old lease
            self._live[name] = node.healthy
            self._lease[name] = node.lease
            score = (node.ready, node.pools)
            if self._score.get(name) != score:
                self._score[name], self._score_at[name] = score, now
        for gone in set(self._live) - set(view.nodes):
            del self._live[gone]
            self._score.pop(gone, None)
            self._score_at.pop(gone, None)
        unheld: dict[tuple[str, int], float] = {}
        for vip, a in view.vips.items():
            owner = view.nodes.get(a.node)
            if owner is not None and a.state == "assigned" and vip not in owner.vips:
                key = (vip, a.mod_revision)
                unheld[key] = self._unheld_at.get(key, now)
        self._unheld_at = unheld
        manual = {
            (vip, a.mod_revision): self._manual_at.get((vip, a.mod_revision), now)
            for vip, a in view.vips.items()
            if a.state == "assigned" and a.cause == "manual"
        }
        self._manual_at = manual
        pin = view.settings.failback_hold if view.settings is not None else 0.0
        return Seen(
            held_down={n: at for n, at in self._down_at.items() if now - at < self.health_hold},
            settled=frozenset(n for n, at in self._score_at.items() if now - at >= self.ready_hold),
            unheld=frozenset(
                vip for (vip, _), at in unheld.items() if now - at >= self.unheld_limit
            ),
            pinned=frozenset(vip for (vip, _), at in manual.items() if now - at < pin),
        )
