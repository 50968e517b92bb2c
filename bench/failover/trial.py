"""One trial: settle a stack, start the probe and the two-owners watcher, inject, measure, recover.

The probe (the lab's `client.Probe`) opens a new connection to the VIP every
few milliseconds from the client namespace and records which node answered;
the watcher (the lab's `watch.TwoOwnersWatcher`) samples every node
namespace's addresses every few milliseconds. After the fault the trial
waits until a node other than the old one answers, then watches for `hold`
seconds more, so that a VIP left behind on the old node is seen.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

from bench.failover.stacks import BenchError, Stack, wait_until
from bench.failover.stats import all_back, dual_time
from bench.failover.wsfleet import Fleet
from haproxy_py.lab.client import NetnsLoop, Probe, outage
from haproxy_py.lab.layout import PROXY_PORT
from haproxy_py.lab.watch import TwoOwnersWatcher

MOVE_TIMEOUT = 30.0  # longer than any stack's detection time with its defaults
WS_TIMEOUT = 30.0


@dataclass
class Trial:
    stack: str
    scenario: str
    repeat: int
    websockets: int  # clients connected through the VIP during the trial (0: none)
    old: str
    new: str | None = None
    gap_ms: float | None = None  # client-visible: last answer (or the fault) -> new node's first
    new_node_ms: float | None = None  # fault -> first answer from the new node
    failed: int = 0  # probe connections after the fault that got no answer
    attempts: int = 0
    dual_ms: float = 0.0  # VIP on two nodes at once, within the trial's window
    dual_at_end: bool = False  # ... and still so when the window closed
    window_ms: float = 0.0
    ws_dropped: int | None = None
    ws_all_back_ms: float | None = None  # fault -> last dropped client reconnected
    detail: str = ""  # the stack's own context, e.g. which node led the controllers
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)


def run(
    stack: Stack,
    scenario: str,
    repeat: int,
    loop: NetnsLoop,
    *,
    probe_interval: float,
    hold: float,
    fleet: Fleet | None = None,
) -> Trial:
    """Measure one fault of `scenario` on `stack`'s active node, then recover that node."""
    old = stack.settle()
    if fleet is not None:
        wait_until(fleet.all_connected, WS_TIMEOUT, "every WebSocket client to be connected")
    trial = Trial(stack.name, scenario, repeat, len(fleet.clients) if fleet else 0, old)
    trial.detail = stack.detail()
    probe = Probe(stack.vip, PROXY_PORT, interval=probe_interval, timeout=1.0, limit=180)
    running = loop.submit(probe.run())
    nodes = {n.name: n.netns for n in stack.lab.layout.nodes}
    watcher = TwoOwnersWatcher(nodes, {stack.vip}, interval=0.003).__enter__()
    injected = False
    try:

        def answered(since: float, by_other: bool) -> bool:
            return any(
                a.start >= since and a.node and (a.node != old) == by_other
                for a in list(probe.attempts)
            )

        ready = time.monotonic()
        wait_until(lambda: answered(ready, False), 10, f"the probe to get answers from {old}")
        fault, fault_wall = time.monotonic(), time.time()
        injected = True
        try:
            stack.inject(scenario, old)
            wait_until(lambda: answered(fault, True), MOVE_TIMEOUT, "an answer from another node")
            if fleet is not None:
                wait_until(
                    lambda: fleet.returned(fault),
                    WS_TIMEOUT,
                    "every WebSocket client to lose its connection and reconnect",
                )
        except BenchError as exc:
            trial.error = str(exc)
        time.sleep(hold)  # the measurement window after the move (a left-behind VIP shows here)
    finally:
        loop.loop.call_soon_threadsafe(probe.stop)
        watch = watcher.stop()
        end_wall = time.time()
        attempts = running.result(timeout=30)
        if injected:
            stack.recover(scenario, old)
    seen = outage(attempts, fault, old)
    trial.new = seen.new_node
    trial.gap_ms = _ms(seen.gap)
    trial.new_node_ms = _ms(seen.first_new)
    trial.failed = seen.failed
    trial.attempts = len(attempts)
    dual = dual_time(watch.changes, [v.at for v in watch.violations], fault_wall, end_wall)
    trial.dual_ms = round(dual.seconds * 1000, 1)
    trial.dual_at_end = dual.ongoing
    trial.window_ms = round((end_wall - fault_wall) * 1000, 1)
    if fleet is not None:
        downs, backs = zip(*(c.after(fault) for c in fleet.clients), strict=True)
        dropped, back = all_back(list(downs), list(backs), fault)
        trial.ws_dropped = dropped
        trial.ws_all_back_ms = _ms(back)
    return trial
