"""One trial: settle a stack, start the probe and the two-owners watcher, inject, measure, recover.

The probe (the lab's `client.Probe`) opens a new connection to the VIP every
few milliseconds from the client namespace and records which node answered.
Two nodes at once is judged as clients see it: the lab's `arpwatch` asks
who-has for the VIP every 2 ms from the client namespace and counts the
instants two MACs claimed it (an address left on a fenced node answers
nothing); the watcher (the lab's `watch.TwoOwnersWatcher`) samples every node
namespace's addresses every few milliseconds, reported apart. After the fault the trial
waits until a node other than the old one answers, then watches for `hold`
seconds more, so that a VIP left behind on the old node is seen. With a
WebSocket fleet it also waits until every client is connected through a node
that the probe reached after the move (a connection that survived there counts).
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass
from typing import Any

from bench.failover.stacks import BenchError, Stack, wait_until
from bench.failover.stats import Back, all_back, dual_time
from bench.failover.wsfleet import Fleet
from haproxy_py.lab.arpwatch import ArpWatch
from haproxy_py.lab.client import Attempt, NetnsLoop, Probe, outage
from haproxy_py.lab.layout import PROXY_PORT
from haproxy_py.lab.watch import TwoOwnersWatcher

MOVE_TIMEOUT = 30.0  # longer than any stack's detection time with its defaults
WS_TIMEOUT = 30.0
ARP_PERIOD = 0.002


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
    arp_doubles: int = 0  # instants two nodes answered ARP for the VIP (< 10 ms apart)
    dual_ms: float = 0.0  # VIP address on two nodes at once (fenced or not), in the window
    dual_at_end: bool = False  # ... and still so when the window closed
    load: float = 0.0  # the machine's 1-minute load average at the fault
    window_ms: float = 0.0
    ws_reconnected: int | None = None  # clients that had to reconnect (the rest survived)
    ws_all_back_ms: float | None = None  # fault -> every client on a serving node
    detail: str = ""  # the stack's own context, e.g. which node led the controllers
    error: str | None = None
    settle_s: float = 0.0  # where a trial's wall time goes: waiting for the steady state,
    measure_s: float = 0.0  # the fault until the window closed (and the fleet was back),
    recover_s: float = 0.0  # undoing the fault

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)


def serving(attempts: list[Attempt], fault: float, old: str) -> set[str]:
    """The nodes that answered the probe from the first answer of a node other than `old`
    after `fault` on: those serving the VIP after the move (two of them in a split brain)."""
    moved = min(
        (a.start for a in attempts if a.start >= fault and a.node not in (None, old)), default=None
    )
    if moved is None:
        return set()
    return {a.node for a in attempts if a.start >= moved and a.node is not None}


def run(
    stack: Stack,
    scenario: str,
    repeat: int,
    loop: NetnsLoop,
    *,
    probe_interval: float,
    hold: float,
    delay: float = 0.0,
    fleet: Fleet | None = None,
) -> Trial:
    """Measure one fault of `scenario` on `stack`'s active node, then recover that node.

    `delay` (drawn at random by the caller) goes between the steady state and the fault: a
    trial starts when the previous one's VIP moved, which etcd's 500 ms expiry sweep timed, so
    without it every fault would hit the same phase of that sweep and of the keepalives."""
    began = time.monotonic()
    old = stack.settle()
    if fleet is not None:
        wait_until(fleet.all_connected, WS_TIMEOUT, "every WebSocket client to be connected")
    trial = Trial(stack.name, scenario, repeat, len(fleet.clients) if fleet else 0, old)
    stack.prepare(scenario, old)
    trial.detail = stack.detail()
    probe = Probe(stack.vip, PROXY_PORT, interval=probe_interval, timeout=1.0, limit=180)
    running = loop.submit(probe.run())
    nodes = {n.name: n.netns for n in stack.lab.layout.nodes}
    watcher = TwoOwnersWatcher(nodes, {stack.vip}, interval=0.003).__enter__()
    client = stack.lab.layout.client
    arp = ArpWatch(client.netns, [stack.vip], client.address, period=ARP_PERIOD).__enter__()
    injected = False
    backs: list[Back] | None = None
    try:

        def answered(since: float, by_other: bool) -> bool:
            return any(
                a.start >= since and a.node and (a.node != old) == by_other
                for a in list(probe.attempts)
            )

        ready = time.monotonic()
        wait_until(lambda: answered(ready, False), 10, f"the probe to get answers from {old}")
        time.sleep(delay)
        fault, fault_wall = time.monotonic(), time.time()
        trial.load = round(os.getloadavg()[0], 2)
        injected = True
        try:
            stack.inject(scenario, old)
            wait_until(lambda: answered(fault, True), MOVE_TIMEOUT, "an answer from another node")
            if fleet is not None:

                def fleet_back() -> bool:
                    nonlocal backs
                    backs = fleet.back(fault, serving(list(probe.attempts), fault, old))
                    return backs is not None

                wait_until(
                    fleet_back, WS_TIMEOUT, "every WebSocket client on a node serving the VIP"
                )
        except BenchError as exc:
            trial.error = str(exc)
        time.sleep(hold)  # the measurement window after the move (a left-behind VIP shows here)
    finally:
        loop.loop.call_soon_threadsafe(probe.stop)
        watch = watcher.stop()
        arp.stop()
        end_wall = time.time()
        attempts = running.result(timeout=30)
        measured = time.monotonic()
        if injected:
            stack.recover(scenario, old)
    trial.settle_s = round(fault - began, 2)
    trial.measure_s = round(measured - fault, 2)
    trial.recover_s = round(time.monotonic() - measured, 2)
    seen = outage(attempts, fault, old)
    trial.new = seen.new_node
    trial.gap_ms = _ms(seen.gap)
    trial.new_node_ms = _ms(seen.first_new)
    trial.failed = seen.failed
    trial.attempts = len(attempts)
    dual = dual_time(watch.changes, [v.at for v in watch.violations], fault_wall, end_wall)
    trial.arp_doubles = sum(1 for _, second in arp.doubles() if second.at >= fault)
    if arp.probes < 10 and trial.error is None:
        trial.error = "the ARP watcher did not probe: two answerers could not be judged"
    trial.dual_ms = round(dual.seconds * 1000, 1)
    trial.dual_at_end = dual.ongoing
    trial.window_ms = round((end_wall - fault_wall) * 1000, 1)
    if backs is not None:
        trial.ws_reconnected, back = all_back(backs, fault)
        trial.ws_all_back_ms = _ms(back)
    return trial
