"""Outside load: CPU that processes other than the benchmark's use while it runs.

The machine is shared, so before each test the harness waits (boundedly) for a
quiet moment, and a window with too much outside load is measured again.
"""

from __future__ import annotations

import os
import time

from bench.procfs import clock_ticks_per_second, cpu_ticks, read_machine


def outside_cores(busy_ticks: int, own_ticks: int, seconds: float, ticks_per_s: int) -> float:
    """Busy time not spent in our processes, in cores (1.0 = one core fully busy)."""
    if seconds <= 0:
        return 0.0
    return max(0.0, (busy_ticks - own_ticks) / (seconds * ticks_per_s))


def measure_outside(own_pids: list[int], seconds: float = 1.0) -> float:
    pids = [*own_pids, os.getpid()]
    busy0, own0, t0 = read_machine()["cpu"].busy, sum(map(cpu_ticks, pids)), time.monotonic()
    time.sleep(seconds)
    busy1, own1, t1 = read_machine()["cpu"].busy, sum(map(cpu_ticks, pids)), time.monotonic()
    return outside_cores(busy1 - busy0, own1 - own0, t1 - t0, clock_ticks_per_second())


def wait_quiet(own_pids: list[int], limit: float, max_wait_s: float) -> float:
    """Wait (at most `max_wait_s`) for outside load below `limit` cores; return the last level."""
    deadline = time.monotonic() + max_wait_s
    level = measure_outside(own_pids)
    while level >= limit and time.monotonic() < deadline:
        level = measure_outside(own_pids)
    return level
