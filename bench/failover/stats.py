"""Pure statistics of the failover benchmark: percentiles, split-brain time, summaries.

Kept free of I/O so the numbers in the report can be checked by unit tests.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0..100) by linear interpolation between closest ranks; None if empty."""
    if not values:
        return None
    if not 0 <= q <= 100:
        raise ValueError(f"percentile must be within 0..100, got {q}")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


@dataclass(frozen=True)
class Summary:
    """p50/p95/max of the measured values, and how many trials gave no value at all."""

    count: int
    missing: int
    p50: float | None
    p95: float | None
    max: float | None

    def as_dict(self) -> dict[str, float | int | None]:
        return {
            "count": self.count,
            "missing": self.missing,
            "p50": self.p50,
            "p95": self.p95,
            "max": self.max,
        }


def summarize(values: Iterable[float | None]) -> Summary:
    """Summary of per-trial values; a None (e.g. the VIP never moved in time) counts as missing."""
    items = list(values)
    present = [v for v in items if v is not None]
    return Summary(
        count=len(items),
        missing=len(items) - len(present),
        p50=percentile(present, 50),
        p95=percentile(present, 95),
        max=max(present) if present else None,
    )


@dataclass(frozen=True)
class Dual:
    """How long a VIP was on two or more nodes in a window, and whether it still was at the end."""

    seconds: float
    ongoing: bool


def dual_time(
    changes: Sequence[tuple[float, str, tuple[str, ...]]],
    confirmed: Iterable[float],
    start: float,
    end: float,
) -> Dual:
    """Total time within [start, end] during which any VIP had two or more holders.

    `changes` are the watcher's (time, vip, holders) records, one per change of a
    VIP's holders, in time order. A watcher sweep reads namespaces one after the
    other, so a VIP moving during a sweep can look doubled for one sweep; an
    interval counts only if it contains a `confirmed` instant (a re-read that
    found both holders at once).
    """
    proofs = sorted(confirmed)
    intervals: list[tuple[float, float | None]] = []
    opened: dict[str, float] = {}
    for at, vip, holders in changes:
        if len(holders) >= 2:
            opened.setdefault(vip, at)
        elif vip in opened:
            intervals.append((opened.pop(vip), at))
    intervals.extend((since, None) for since in opened.values())

    total = 0.0
    ongoing = False
    for since, until in intervals:
        stop = end if until is None else until
        if not any(since <= p <= stop for p in proofs):
            continue
        overlap = min(stop, end) - max(since, start)
        if overlap > 0:
            total += overlap
        if until is None or until > end:
            ongoing = ongoing or since <= end
    return Dual(seconds=total, ongoing=ongoing)


@dataclass(frozen=True)
class Back:
    """A WebSocket client served again after a fault: since when its connection is up, and
    whether it had to reconnect (False: its connection survived the fault on a serving node)."""

    since: float
    reconnected: bool


def all_back(backs: Sequence[Back], fault: float) -> tuple[int, float]:
    """How many clients had to reconnect, and the time from the fault until the last of them
    was connected again (0 when every connection survived)."""
    again = [b.since for b in backs if b.reconnected]
    return len(again), max(0.0, max(again, default=fault) - fault)
