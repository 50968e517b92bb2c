"""What a chaos run saw, judged: per-fault outcomes, violations, and the report. Pure.

Times are monotonic seconds (shared by every namespace). A violation names the
invariant, when, the fault in progress and the evidence, so that the seed and
the fault index are enough to go and look.
"""

from __future__ import annotations

import itertools
import os
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from haproxy_py.lab.chaos.schedule import Fault

# How long a fault kind may leave a VIP unanswered while it is in force (s); kinds not named
# here are bound only after the heal (`not-served`). All etcd members stopped: the failsafe
# keeps a working holder's VIPs through the outage, so clients may miss at most this much
# (a machine-load margin; without the failsafe the outage would last the whole hold).
ETCD_ALL_OUTAGE: float | None = 2.0


def outage_bound(kind: str) -> float | None:
    """The most outage `kind` may cause, heal included; None: no bound during the fault."""
    return ETCD_ALL_OUTAGE if kind == "etcd-all" else None


@dataclass(frozen=True)
class Violation:
    at: float
    invariant: str  # two-answering, not-served, websocket-order, etcd-kernel, not-converged...
    fault: str  # the fault in progress (its label), "" between faults
    evidence: str


@dataclass(frozen=True)
class Outcome:
    fault: Fault
    outage: float  # longest stretch without an answer on any VIP, inject to recovery (s)
    recovered: float | None  # seconds from heal until every VIP answered again; None: never
    converged: float | None  # seconds from heal until the cluster was healthy again
    budget: float

    @property
    def within_budget(self) -> bool:
        return self.recovered is not None and self.recovered <= self.budget


@dataclass
class SeqCheck:
    """Echoes on one WebSocket connection must come back exactly in the order sent, once each.

    Messages still unanswered when the connection ends are not counted as lost: the
    client saw the close and sends them again on its next connection."""

    connection: str
    expected: int = 0
    sent: int = 0
    echoes: int = 0
    problems: list[str] = field(default_factory=list)

    def echo(self, seq: int) -> str | None:
        problem = None
        if seq > self.expected:
            missing = seq - self.expected
            problem = f"{self.connection}: lost {missing} (got {seq}, expected {self.expected})"
        elif seq < self.expected:
            problem = f"{self.connection}: duplicate or reordered {seq} (expected {self.expected})"
        if problem is not None:
            self.problems.append(problem)
        self.expected = max(self.expected, seq + 1)
        return problem


def outage(successes: Sequence[float], start: float, end: float) -> float:
    """The longest time without a successful answer from `start` to `end`, counting from the
    last answer before `start` (`successes`: start times of answered attempts, sorted)."""
    before = [t for t in successes if t < start]
    points = [before[-1] if before else start, *(t for t in successes if start <= t <= end), end]
    return max((b - a for a, b in itertools.pairwise(points)), default=0.0)


def first_after(successes: Sequence[float], since: float) -> float | None:
    return next((t for t in successes if t >= since), None)


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    return statistics.quantiles(ordered, n=100, method="inclusive")[int(q) - 1]


def summary(outcomes: Sequence[Outcome]) -> list[dict[str, Any]]:
    """One row per fault kind: count, outage p50/p95/max (ms), recoveries within budget."""
    rows = []
    for kind in sorted({o.fault.kind for o in outcomes}):
        mine = [o for o in outcomes if o.fault.kind == kind]
        gaps = [o.outage for o in mine]
        rows.append(
            {
                "kind": kind,
                "count": len(mine),
                "outage_p50_ms": _ms(percentile(gaps, 50)),
                "outage_p95_ms": _ms(percentile(gaps, 95)),
                "outage_max_ms": _ms(max(gaps)),
                "within_budget": sum(o.within_budget for o in mine),
            }
        )
    return rows


@dataclass
class Report:
    seed: int
    mode: str
    clients: int
    outcomes: list[Outcome] = field(default_factory=list)
    violations: list[Violation] = field(default_factory=list)
    counters: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    stopped_early: str = ""
    kinds: tuple[str, ...] = ()  # the kinds drawn from, when not all of them
    reached: int = 0  # the index of the last fault begun
    load_max: float = 0.0  # the machine's highest 1-minute load average seen after a fault

    def replay(self) -> str:
        """The command that runs this schedule again up to the last fault begun."""
        command = f"hactl lab chaos --seed {self.seed} --mode {self.mode} --faults {self.reached}"
        return command + (f" --kinds {','.join(self.kinds)}" if self.kinds else "")

    @property
    def passed(self) -> bool:
        return not self.violations and not self.stopped_early

    def to_json(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "mode": self.mode,
            "clients": self.clients,
            "faults": len(self.outcomes),
            "seconds": round(self.seconds, 1),
            "load_max": round(self.load_max, 2),
            "passed": self.passed,
            "replay": self.replay(),
            "stopped_early": self.stopped_early,
            "counters": self.counters,
            "summary": summary(self.outcomes),
            "violations": [asdict(v) for v in self.violations],
            "outcomes": [
                {
                    **asdict(o.fault),
                    "outage_ms": _ms(o.outage),
                    "recovered_ms": _ms(o.recovered),
                    "converged_ms": _ms(o.converged),
                    "budget_ms": _ms(o.budget),
                    "within_budget": o.within_budget,
                }
                for o in self.outcomes
            ],
        }

    def text(self) -> str:
        head = f"chaos {self.mode}: {len(self.outcomes)} faults in {self.seconds:.0f} s, "
        head += f"seed {self.seed}, {self.clients} WebSocket clients, "
        head += f"machine load up to {self.load_max:.1f} on {os.cpu_count()} cores"
        lines = [head, ", ".join(f"{k} {v}" for k, v in sorted(self.counters.items())), ""]
        lines.append(
            f"{'fault kind':<18}{'count':>6}{'p50 ms':>9}{'p95 ms':>9}{'max ms':>9}  in budget"
        )
        for row in summary(self.outcomes):
            lines.append(
                f"{row['kind']:<18}{row['count']:>6}{row['outage_p50_ms']:>9}"
                f"{row['outage_p95_ms']:>9}{row['outage_max_ms']:>9}  "
                f"{row['within_budget']}/{row['count']}"
            )
        lines.append("")
        if self.stopped_early:
            lines.append(f"STOPPED EARLY: {self.stopped_early}")
        lines.append(f"{len(self.violations)} violation(s)")
        for v in self.violations:
            lines.append(f"  {v.invariant} during {v.fault or '(no fault)'}: {v.evidence}")
        if not self.passed:
            lines.append(f"replay: {self.replay()}")
        return "\n".join(lines)
