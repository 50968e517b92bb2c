"""Whether the lab has settled after a fault, and waiting until something holds.

One copy for the lab tests (tests/lab/e2e), the chaos run and the failover
benchmark: a lab is `healthy` when every node is registered and healthy, every
VIP assigned and answering and, in active-active, every node holds a VIP (a
rebalance still to come would move a VIP in the middle of the next fault);
`settled` also wants every agent and controller watching etcd again.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

from haproxy_py.cluster.store import StoreError
from haproxy_py.lab import control


def wait(check: Callable[[], bool], limit: float, every: float = 0.05) -> float | None:
    """Seconds until `check` held, polling every `every` s; None when it still fails after
    `limit`."""
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > limit:
            return None
        time.sleep(every)
    return time.monotonic() - start


def healthy(lab: control.Lab) -> bool:
    """Every node healthy, every VIP assigned and answering; in active-active every node holds
    a VIP."""
    return not unhealthy(lab)


def unhealthy(lab: control.Lab) -> str:
    """What keeps the lab from being `healthy` ("" when nothing): a violation's evidence."""
    try:
        view = lab.view()
    except StoreError as exc:
        return f"etcd unreadable: {exc}"
    lacking = lab.not_ready(view)
    if lacking or lab.layout.mode != "active-active":
        return lacking
    idle = [n.name for n in lab.layout.nodes if not view.vips_of(n.name)]
    return f"{', '.join(idle)} holds no VIP" if idle else ""


def settled(lab: control.Lab) -> bool:
    """`healthy`, and no daemon still retrying its etcd watch."""
    return watches_up(lab) and healthy(lab)


def watches_up(lab: control.Lab) -> bool:
    """No agent or controller is still retrying its etcd watch. After a partition heals, a
    node registers again at once but its watch comes back only at its next retry (up to a
    second later); a fault injected meanwhile would measure that backoff, not the fault."""
    return not any(
        _watch_down(lab.paths.log(f"{node.name}/{process}"))
        for node in lab.layout.nodes
        for process in ("agent", "controller")
    )


def _watch_down(log: Path) -> bool:
    """Does the daemon's log end with a watch that went down and has not been restored?"""
    down: set[str] = set()
    try:
        lines = log.read_text().splitlines()
    except FileNotFoundError:
        return False
    for line in lines:
        if '"etcd watch ' not in line:
            continue
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            continue
        if event.get("event") == "etcd watch down, retrying":
            down.add(event.get("prefix", ""))
        elif event.get("event") == "etcd watch restored":
            down.discard(event.get("prefix", ""))
    return bool(down)
