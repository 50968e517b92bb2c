"""Capacity: the highest rate each proxy sustains with every core, and how workers share load.

Unpinned, with as many workers as CPUs (haproxy-py `workers = "auto"` against
nginx `worker_processes auto`), the offered rate climbs a ladder; a step is
sustained when the load generator completed at least 95 % of it, without
errors, with a p99 round trip of at most 10 ms. Both proxies run at once (the
one not under load is idle) and climb together, rung by rung: at each rate
each proxy still climbing is measured in turn, and one whose step was not
sustained is measured once more after the others; if it fails again, its
ladder ends (every run is bounded). Taking the rungs in turns keeps a burst of
load from outside the benchmark, which lasts seconds on this shared machine,
from deciding a rung for one proxy only. The load generator and the backend
run unpinned too (the machine has 2 cores: they compete with the proxy, as
they would not in production), so the figure is what the whole machine
sustains through each proxy, and the ratio is the comparable part.

Spread: 1,000 idle WebSockets through haproxy-py, counted per worker by its
admin API (`haproxy_py_worker_connections`); max/min is the evenness of the
kernel's SO_REUSEPORT hash. Memory: each process's RSS before any connection
(the fixed per-worker baseline) and the growth over all processes per
WebSocket.
"""

from __future__ import annotations

import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from bench import loadgen
from bench.loadgen import Workload
from bench.procfs import rss_kib
from bench.targets import ALL_CPUS, CAPACITY_TARGETS, Running, Target

P99_LIMIT_US = 10_000.0
COMPLETED = 0.95
# Even steps, 10 % of the rate near the top (a coarse top step quantises the ratio), up
# to tops above what either proxy sustained here (a proxy that reaches the top is capped).
# Beyond what both proxies sustained on this machine (a top reached says only "at least").
LADDERS = {
    "ws": (*range(4_000, 48_000, 4_000), *range(48_000, 96_001, 8_000)),
    "http": (*range(2_000, 24_000, 2_000), *range(24_000, 48_001, 4_000)),
}
CONNS = {"ws": 100, "http": 50}
SPREAD_CONNS = 1000


@dataclass(frozen=True)
class Step:
    offered: float
    achieved: float
    p99_us: float
    errors: int

    @property
    def sustained(self) -> bool:
        return (
            self.errors == 0
            and self.achieved >= COMPLETED * self.offered
            and 0 < self.p99_us <= P99_LIMIT_US
        )


def highest(steps: list[Step]) -> float:
    """The highest offered rate sustained before the first step that was not (0: none)."""
    best = 0.0
    for step in steps:
        if not step.sustained:
            break
        best = step.offered
    return best


@dataclass
class Capacity:
    target: str
    ladders: dict[str, list[dict[str, float]]] = field(default_factory=dict)
    sustained: dict[str, float] = field(default_factory=dict)
    error: str = ""


@dataclass
class Spread:
    connections: dict[str, float]  # by worker
    baseline_kib: dict[str, int]  # RSS of each process before any connection
    kib_per_conn: float  # RSS growth over all processes, per WebSocket
    error: str = ""

    @property
    def ratio(self) -> float:
        values = list(self.connections.values())
        return max(values) / min(values) if values and min(values) > 0 else float("inf")


def measure(mode: str, rate: float, address: str) -> Step:
    workload = Workload(f"{mode}-{rate}", mode, mode, CONNS[mode], rate, 64, False, 0.5, 2.0)
    raw = loadgen.run(workload, address, {}, cpus=ALL_CPUS)
    window = float(raw.get("window_s", 0.0)) or workload.window_s
    return Step(
        offered=rate,
        achieved=int(raw.get("messages", 0)) / window,
        p99_us=float(raw.get("p99_us", 0.0)),
        errors=int(raw.get("errors", 0)) + (0 if raw.get("messages") else 1),
    )


def _measure_at(mode: str, addresses: dict[str, str]) -> Callable[[str, float], Step]:
    return lambda name, rate: measure(mode, rate, addresses[name])


def climb_together(
    names: list[str],
    rates: Iterable[float],
    measure: Callable[[str, float], Step],
    say: Callable[[str], None],
) -> dict[str, list[Step]]:
    """Every target up the same ladder in turns (module docstring); each target's steps."""
    steps: dict[str, list[Step]] = {name: [] for name in names}
    climbing = list(names)
    for rate in rates:
        if not climbing:
            break
        first = {name: measure(name, rate) for name in climbing}
        for name in climbing:
            step = first[name] if first[name].sustained else measure(name, rate)
            say(
                f"  {name} {rate:.0f}/s: {step.achieved:.0f}/s, p99 {step.p99_us:.0f} us, "
                f"{step.errors} errors: {'sustained' if step.sustained else 'not sustained'}"
            )
            steps[name].append(step)
        climbing = [name for name in climbing if steps[name][-1].sustained]
    return steps


def worker_connections(admin: str) -> dict[str, float]:
    """haproxy_py_worker_connections by worker, read from the admin API."""
    with urllib.request.urlopen(f"http://{admin}/metrics", timeout=10) as response:
        text = response.read().decode()
    values = {}
    for line in text.splitlines():
        if line.startswith("haproxy_py_worker_connections{"):
            labels, value = line.rsplit(" ", 1)
            values[labels.split('"')[1]] = float(value)
    return values


def spread(running: Running) -> Spread:
    """Open 1,000 idle WebSockets through haproxy-py and count them by worker."""
    baseline = {str(pid): rss_kib([pid]) for pid in running.mem_pids}
    before = sum(baseline.values())
    conns = loadgen.IdleConnections(running.address, SPREAD_CONNS)
    try:
        opened = conns.wait_open()
        after = rss_kib(running.mem_pids)
        per_worker = worker_connections(running.admin)
        conns.close()
    except (TimeoutError, ValueError, OSError) as exc:
        return Spread({}, baseline, 0.0, str(exc))
    finally:
        conns.stop()
    count = int(opened.get("open", 0)) or 1
    return Spread(per_worker, baseline, (after - before) / count)


def run_all(
    start: Callable[[Target], Running | None], say: Callable[[str], None]
) -> dict[str, Any]:
    """Capacity of every capacity target, the ratio, and haproxy-py's spread over workers."""
    results = {t.name: Capacity(t.name) for t in CAPACITY_TARGETS}
    running: dict[str, Running] = {}
    try:
        for target in CAPACITY_TARGETS:
            started = start(target)
            if started is None:
                results[target.name].error = "did not start"
            else:
                running[target.name] = started
        for mode, rates in LADDERS.items():
            say(f"capacity {mode}: {', '.join(running)} in turns")
            addresses = {name: r.address for name, r in running.items()}
            for name, steps in climb_together(
                list(addresses), rates, _measure_at(mode, addresses), say
            ).items():
                results[name].ladders[mode] = [asdict(s) for s in steps]
                results[name].sustained[mode] = highest(steps)
    finally:
        for started in running.values():
            started.stop()
    doc: dict[str, Any] = {"targets": {name: asdict(r) for name, r in results.items()}}
    doc["tops"] = {mode: rates[-1] for mode, rates in LADDERS.items()}
    ours, nginx = results["haproxy-py-auto"], results["nginx-auto"]
    doc["ratios"] = {
        mode: (ours.sustained.get(mode, 0.0) / nginx.sustained[mode])
        if nginx.sustained.get(mode)
        else None
        for mode in LADDERS
    }
    fresh = start(CAPACITY_TARGETS[1])  # (its baseline is RSS before any connection)
    if fresh is not None:
        try:
            result = spread(fresh)
        finally:
            fresh.stop()
        doc["spread"] = {**asdict(result), "ratio": result.ratio}
        say(f"spread of {SPREAD_CONNS} WebSockets over workers: {result.connections}")
    return doc
