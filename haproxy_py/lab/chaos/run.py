"""A chaos run on a running lab: load on, then each fault of the schedule injected, held,
healed and judged, one at a time; the lab is healed and the load stopped whatever happens.

Invariants, each a `Violation` when broken (see docs/lab.md):
- two-answering: two MACs answer ARP for one VIP from the client namespace (any time);
- not-served: a VIP gets no answer within `budget` s after a fault heals;
- outage: a kind with a bound of its own (`verdict.outage_bound`) left a VIP unanswered longer;
- websocket-order: an echo lost, duplicated or reordered within one connection;
- websocket-stall: a WebSocket client with no echo and no new attempt since the heal,
  `budget` s after convergence;
- not-converged: the cluster is not healthy again within `converge` s of the heal;
- etcd-kernel: after convergence, a `vips/` owner without the address, or another node
  with it, for longer than `etcd_kernel` s;
- idle-cpu, etcd-db-size: checked once the schedule is done and the load stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from haproxy_py.cluster.store import StoreError
from haproxy_py.lab import control
from haproxy_py.lab.arpwatch import ArpWatch
from haproxy_py.lab.chaos.faults import FaultError, Injector
from haproxy_py.lab.chaos.load import WsStats, ws_load
from haproxy_py.lab.chaos.schedule import KINDS, Fault, plan
from haproxy_py.lab.chaos.verdict import (
    Outcome,
    Report,
    Violation,
    first_after,
    outage,
    outage_bound,
)
from haproxy_py.lab.client import NetnsLoop, Probe
from haproxy_py.lab.etcdstatus import etcd_status
from haproxy_py.lab.layout import PROXY_PORT
from haproxy_py.lab.settle import healthy, unhealthy, wait
from haproxy_py.lab.watch import AddressReader, TwoOwnersWatcher

Say = Callable[[str], None]
SETTLE_LIMIT = 90.0  # past this the lab is broken for good and the run stops
IDLE_CPU_SHARE = 0.25  # of one core, per daemon, with no load and no fault
IDLE_SAMPLE = 5.0
ETCD_DB_LIMIT = 32 * 1024 * 1024
ARP_PERIOD = 0.005
KEEP_CLAIMS = 200  # ARP claims kept across a fault boundary (the rest are judged and dropped)


@dataclass(frozen=True)
class Options:
    seed: int = 1
    faults: int | None = 60
    duration: float | None = None
    clients: int = 20
    budget: float = 8.0  # s from a heal until every VIP answers again
    converge: float = 20.0  # s from a heal until the cluster is healthy again
    etcd_kernel: float = 3.0  # s the etcd owners and the kernels may disagree after convergence
    http_interval: float = 0.05  # one new HTTP connection per VIP every this many s
    ws_period: float = 0.1  # each WebSocket client sends a numbered message this often
    kinds: tuple[str, ...] = tuple(KINDS)

    def bound(self) -> float:
        """The most a run may take: its load loops stop by themselves after this."""
        if self.duration is not None:
            return self.duration + SETTLE_LIMIT + 60
        return (self.faults or 0) * (3.0 + self.budget + self.converge + SETTLE_LIMIT) + 120


# Faults after which a node's agent must have registered again under a new lease.
NEW_LEASE = {"kill-node", "term-agent", "kill-agent"}


def leases(lab: control.Lab) -> dict[str, int]:
    """Each node's registration lease, as etcd has it now (empty when unreadable)."""
    try:
        return {name: record.lease for name, record in lab.view().nodes.items()}
    except StoreError:
        return {}


def not_running(lab: control.Lab) -> list[str]:
    """The daemons, etcd members and backends of the lab that do not run."""
    layout = lab.layout
    dead = [
        f"{node.name}/{process}"
        for node in layout.nodes
        for process in control.NODE_PROCESSES
        if f"{node.name}/{process}" not in lab.running(node.name)
    ]
    return dead + [m.name for m in (*layout.etcd, *layout.apps) if not lab.running(m.name)]


class Run:
    def __init__(self, lab: control.Lab, options: Options, say: Say) -> None:
        self.lab = lab
        self.options = options
        self.say = say
        layout = lab.layout
        self.report = Report(options.seed, layout.mode, options.clients)
        if set(options.kinds) != set(KINDS):
            self.report.kinds = options.kinds
        self.injector = Injector(lab)
        self.readers = {n.name: AddressReader(n.netns) for n in layout.nodes}
        self.timeline: list[tuple[float, str]] = []  # (monotonic start, fault label or "")
        self.ws = WsStats()
        self.ws_seen = 0
        self.stalls_reported: set[str] = set()
        self.arp_judged = 0.0  # the latest ARP claim already judged

    def violation(self, invariant: str, evidence: str, at: float | None = None) -> None:
        """Record a violation; one seen late (`at` in the past) is laid on the fault that
        was in force at `at`."""
        at = time.monotonic() if at is None else at
        fault = next((label for start, label in reversed(self.timeline) if start <= at), "")
        evidence += f" [machine load {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores]"
        v = Violation(at, invariant, fault, evidence)
        self.report.violations.append(v)
        self.say(f"  VIOLATION {invariant}: {evidence}")

    # ---- continuous checks, judged at the end of each fault ----

    def judge_arp(self, arp: ArpWatch) -> None:
        """One violation per VIP for the pairs of claims by two MACs seen since the last
        judgement (with how many and over how long), then drop the claims already judged."""
        pairs = [(a, b) for a, b in arp.doubles() if b.at > self.arp_judged]
        for vip in sorted({b.vip for _, b in pairs}):
            mine = [(a, b) for a, b in pairs if b.vip == vip]
            first, last = mine[0], mine[-1][1]
            macs = sorted({c.mac for pair in mine for c in pair})
            self.violation(
                "two-answering",
                f"{vip} claimed by {' and '.join(macs)}: {len(mine)} pair(s) of claims "
                f"< 10 ms apart over {last.at - first[1].at:.2f} s, the first "
                f"{(first[1].at - first[0].at) * 1000:.1f} ms apart",
                first[1].at,
            )
        claims = list(arp.claims)
        if claims:
            self.arp_judged = max(c.at for c in claims)
        del arp.claims[: max(0, len(claims) - KEEP_CLAIMS)]

    def judge_ws(self) -> None:
        for at, problem in self.ws.problems[self.ws_seen :]:
            self.violation("websocket-order", problem, at)
        self.ws_seen = len(self.ws.problems)

    def judge_stalls(self, healed: float) -> None:
        """Every WebSocket client has had an echo or begun a new attempt since the heal, at the
        latest `budget` s after convergence (a connection whose segments were dropped silently
        retransmits with a doubling timeout, so it may take about twice the outage)."""
        wait(lambda: not self.ws.behind(healed), self.options.budget)
        for connection, since, stall in self.ws.behind(healed):
            if connection not in self.stalls_reported:  # once per connection
                self.stalls_reported.add(connection)
                self.violation("websocket-stall", stall, since)

    def judge_owners(self) -> None:
        """After convergence etcd's owner of each VIP holds it and no other node does."""
        mismatch = ""

        def agree() -> bool:
            nonlocal mismatch
            try:
                view = self.lab.view()
            except StoreError as exc:
                mismatch = f"etcd unreadable: {exc}"
                return False
            held = {name: reader.addresses() for name, reader in self.readers.items()}
            for vip in self.lab.layout.vips:
                owner = view.vips[vip].node if vip in view.vips else None
                holders = sorted(n for n, addresses in held.items() if vip in addresses)
                if holders != ([owner] if owner else []):
                    mismatch = f"{vip}: etcd says {owner}, kernels show {holders or 'nobody'}"
                    return False
            return True

        if wait(agree, self.options.etcd_kernel) is None:
            self.violation("etcd-kernel", mismatch)

    # ---- one fault ----

    def one(self, fault: Fault, probes: dict[str, Probe], arp: ArpWatch) -> bool:
        """Inject, hold, heal and judge `fault`; False when the lab did not come back at all."""
        o = self.options
        self.timeline.append((time.monotonic(), fault.label()))
        self.report.reached = fault.index
        self.say(f"{time.strftime('%H:%M:%S')} {fault.label()} (hold {fault.hold:g} s)")
        before = leases(self.lab)
        start = time.monotonic()
        try:
            self.injector.inject(fault)
            time.sleep(fault.hold)
        except FaultError as exc:
            self.violation("fault-failed", str(exc))
        finally:
            healed = time.monotonic()
            with uninterrupted():
                try:
                    self.injector.heal()
                except FaultError as exc:
                    self.violation("fault-failed", f"heal: {exc}")

        def successes(vip: str) -> list[float]:
            return sorted(a.start for a in list(probes[vip].attempts) if a.node)

        def served() -> bool:
            return all(first_after(successes(v), healed) for v in probes)

        limit = o.budget + o.converge
        wait(served, limit)
        back = {v: first_after(successes(v), healed) for v in probes}
        late = {v: t for v, t in back.items() if t is None or t - healed > o.budget}
        for vip, t in late.items():
            took = "none" if t is None else f"{t - healed:.1f} s"
            self.violation(
                "not-served", f"{vip} answered again after {took} (budget {o.budget:g} s)"
            )
        gap = max(outage(successes(v), start, back[v] or time.monotonic()) for v in probes)
        bound = outage_bound(fault.kind)
        if bound is not None and gap > bound:
            self.violation("outage", f"no answer for {gap:.2f} s (bound {bound:g} s)", start)
        recovered = (
            None
            if any(t is None for t in back.values())
            else max(t - healed for t in back.values() if t is not None)
        )
        renewed = {fault.target: before.get(fault.target)} if fault.kind in NEW_LEASE else {}
        lacking = ""

        def converged_now() -> bool:
            nonlocal lacking
            now = leases(self.lab)
            stale = [n for n, old in renewed.items() if now.get(n) in (None, old)]
            dead = not_running(self.lab)
            lacking = (
                f"{', '.join(stale)} not registered under a new lease"
                if stale
                else f"not running: {', '.join(dead)}"
                if dead
                else unhealthy(self.lab)
            )
            return not lacking

        converged = wait(converged_now, o.converge)
        if converged is None:
            self.violation(
                "not-converged", f"not healthy within {o.converge:g} s of the heal: {lacking}"
            )
            if wait(converged_now, SETTLE_LIMIT) is None:
                return False
        else:
            self.judge_owners()
            self.judge_stalls(healed)
        self.judge_arp(arp)
        self.judge_ws()
        self.report.outcomes.append(Outcome(fault, gap, recovered, converged, o.budget))
        self.report.load_max = max(self.report.load_max, os.getloadavg()[0])
        self.timeline.append((time.monotonic(), ""))
        return True

    # ---- the whole run ----

    def execute(self) -> Report:
        """The whole run; the address readers are closed whatever happens. Ctrl-C (SIGINT)
        stops it: the fault in force is healed, the load stopped, and the report so far
        returned, marked as stopped early."""
        began = time.monotonic()
        try:
            return self._execute()
        except KeyboardInterrupt:  # before the load began, or in the final checks
            self.report.stopped_early = "interrupted"
            self.report.seconds = self.report.seconds or time.monotonic() - began
            return self.report
        finally:
            for reader in self.readers.values():
                reader.close()

    def _execute(self) -> Report:
        o, layout = self.options, self.lab.layout
        client = layout.client
        count = o.faults if o.faults is not None else 100_000
        schedule = plan(o.seed, count, [n.name for n in layout.nodes], layout.vips, o.kinds)
        began = time.monotonic()
        nodes = {n.name: n.netns for n in layout.nodes}
        with (
            NetnsLoop(client.netns) as loop,
            ArpWatch(client.netns, layout.vips, client.address, period=ARP_PERIOD) as arp,
            TwoOwnersWatcher(nodes, set(layout.vips), interval=0.01) as owners,
        ):
            probes = {
                v: Probe(v, PROXY_PORT, interval=o.http_interval, timeout=1.0, limit=o.bound())
                for v in layout.vips
            }
            stop = loop.run(_event())
            runs = [loop.submit(p.run()) for p in probes.values()]
            urls = [f"ws://{v}:{PROXY_PORT}/echo" for v in layout.vips]
            ws = loop.submit(ws_load(urls, o.clients, o.ws_period, o.bound(), stop, self.ws))
            try:
                if wait(lambda: healthy(self.lab), SETTLE_LIMIT) is None:
                    self.report.stopped_early = "the lab was not healthy before the first fault"
                for fault in schedule:
                    if self.report.stopped_early:
                        break
                    if o.duration is not None and time.monotonic() - began > o.duration:
                        break
                    if not self.one(fault, probes, arp):
                        self.report.stopped_early = f"the lab did not recover from {fault.label()}"
            except KeyboardInterrupt:
                self.report.stopped_early = "interrupted"
            finally:
                # the run stops anyway: a Ctrl-C now must not leave a fault in force
                with contextlib.suppress(KeyboardInterrupt), uninterrupted():
                    try:
                        self.injector.heal()
                    except FaultError as exc:
                        self.violation("fault-failed", f"heal: {exc}")
                    for p in probes.values():
                        loop.loop.call_soon_threadsafe(p.stop)
                    loop.loop.call_soon_threadsafe(stop.set)
                    attempts = sum(len(r.result(timeout=30)) for r in runs)
                    ws.result(timeout=30)
                    self.judge_arp(arp)
                    self.judge_ws()
            watched = owners.stop()
        self.report.counters = {
            "http_attempts": attempts,
            "http_answered": sum(1 for p in probes.values() for a in p.attempts if a.node),
            "ws_connections": self.ws.connections,
            "ws_echoes": self.ws.echoes,
            "arp_probes": arp.probes,
            "address_sweeps": watched.sweeps,
            "address_on_two_nodes": len(watched.violations),  # a fenced copy is silent: evidence
        }
        if not self.report.stopped_early:
            self.final_checks()
        self.report.seconds = time.monotonic() - began
        return self.report

    def final_checks(self) -> None:
        self.timeline.append((time.monotonic(), "(after the schedule)"))
        try:
            sizes = etcd_status(self.lab).db_size
        except StoreError as exc:
            self.violation("etcd-db-size", f"etcd unreadable: {exc}")
            sizes = {}
        for member, size in sizes.items():
            if size > ETCD_DB_LIMIT:
                self.violation("etcd-db-size", f"{member}: {size} bytes > {ETCD_DB_LIMIT}")
        before = _cpu_times(self.lab)
        time.sleep(IDLE_SAMPLE)
        after = _cpu_times(self.lab)
        tick = os.sysconf("SC_CLK_TCK")
        for label, ticks in after.items():
            share = (ticks - before.get(label, ticks)) / tick / IDLE_SAMPLE
            if share > IDLE_CPU_SHARE:
                self.violation("idle-cpu", f"{label} used {share:.0%} of a core while idle")


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)  # both stop a run (see `hactl lab chaos`)


@contextlib.contextmanager
def uninterrupted() -> Iterator[None]:
    """A Ctrl-C (SIGINT) or SIGTERM meanwhile is held back and raised as KeyboardInterrupt
    at the end: a heal or a clean-up cut in the middle would leave a fault in force. Only
    the main thread gets signals; elsewhere this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[int] = []
    previous = {sig: signal.signal(sig, lambda s, _: held.append(s)) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if held:
        raise KeyboardInterrupt


async def _event() -> asyncio.Event:
    return asyncio.Event()


def _cpu_times(lab: control.Lab) -> dict[str, int]:
    """utime + stime (clock ticks) of every live daemon of the nodes."""
    found = {}
    for proc in lab.plumbing.procs():
        if "/" not in proc.label or not lab.plumbing.alive(proc):
            continue
        try:
            fields = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        found[proc.label] = int(fields[11]) + int(fields[12])
    return found
