"""`hactl lab chaos` on an active-active lab: a clean run of every fault kind passes, the checker
is shown able to fail, and the defects the chaos runs found stay fixed.

The defects (bench/results/chaos.md): WebSocket clients of a node that lost its VIP without a
planned hand-over hung on TCP retransmits instead of getting 1001; two manual placements on one
node blocked active-active rebalancing for good. Their tests assert what each client finally
received, or where the VIPs finally are, within generous bounds: never a race of tenths of a
second on a shared machine.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from agent.fence import LINGER
from haproxy_py.lab import control, netns
from haproxy_py.lab.chaos.faults import Heal, Injector
from haproxy_py.lab.chaos.load import WsStats, ws_load
from haproxy_py.lab.chaos.run import Options, Run
from haproxy_py.lab.chaos.schedule import KINDS, Fault
from haproxy_py.lab.client import NetnsLoop
from haproxy_py.lab.layout import FAILBACK_HOLD, PROXY_PORT
from tests.support.wait import eventually

from .support import lab_session, settle, view

pytestmark = [pytest.mark.lab, pytest.mark.timeout(900)]

CLEAN_FAULTS = 3 * len(KINDS)  # every kind three times: about 6 minutes (long runs: `make chaos`)
CLEAN_CLIENTS = 4
CLIENTS = 6  # WebSocket clients of the node that loses its VIP
LAST_WORDS = 20.0  # s after the heal for each client's close (about 2 s in a quiet lab)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[control.Lab]:
    with lab_session(tmp_path_factory.mktemp("lab"), "active-active", "chaos") as built:
        yield built


@pytest.mark.timeout(2400)  # about 6 minutes on a quiet machine; a bound, not a budget
def test_a_clean_run_of_every_fault_kind_three_times_passes(lab: control.Lab) -> None:
    settle(lab)
    options = Options(seed=17, faults=CLEAN_FAULTS, clients=CLEAN_CLIENTS)
    report = Run(lab, options, print).execute()
    print(report.text())
    assert {o.fault.kind for o in report.outcomes} == set(KINDS)
    assert report.counters["ws_echoes"] > 500 and report.counters["arp_probes"] > 1000
    assert report.violations == []
    assert report.passed, report.stopped_early


# ---- WebSocket clients after an unplanned loss of the VIP ----


async def _connect(url: str, count: int) -> tuple[aiohttp.ClientSession, list[Client]]:
    session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None, connect=5))
    clients = []
    for i in range(count):
        ws = await session.ws_connect(url, autoping=True, heartbeat=None)
        await ws.send_str(f"hello {i}")
        echo = await ws.receive(timeout=5)
        assert echo.type == aiohttp.WSMsgType.TEXT and echo.data == f"hello {i}", echo
        clients.append(Client(ws, ws._response.headers.get("Via", "?").split()[-1]))
    return session, clients


class Client:
    """One idle WebSocket client: it sends nothing after its first echo, so no segment of its
    own can draw a reset from the VIP's next owner before the old owner's proxy closes it."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse, via: str) -> None:
        self.ws = ws
        self.via = via

    async def last_words(self, within: float) -> str:
        try:
            msg = await self.ws.receive(timeout=within)
        except TimeoutError:
            return f"nothing within {within:g} s"
        return f"{msg.type.name} {msg.data!r}"


async def _last_words(clients: list[Client], within: float) -> list[str]:
    return list(await asyncio.gather(*(c.last_words(within) for c in clients)))


def _held_elsewhere(lab: control.Lab, vip: str, old: str) -> bool:
    """Another node owns `vip` in etcd and its record lists it as held."""
    current = view(lab)
    if current is None:
        return False
    owner = current.owner(vip)
    record = current.nodes.get(owner) if owner is not None else None
    return owner != old and record is not None and vip in record.vips


@pytest.mark.parametrize("kind", ["kill-agent", "freeze-agent", "partition-etcd"])
def test_clients_of_a_node_that_lost_its_vip_unplanned_get_1001(
    lab: control.Lab, kind: str
) -> None:
    """The owner loses the VIP without a planned hand-over (its agent killed and restarted,
    frozen past its lease, or cut off from etcd) and its proxy keeps the connections: once the
    next owner holds the VIP they are closed with 1001, not left to hang on retransmits."""
    vip = lab.layout.vips[0]
    old = settle(lab).owner(vip)
    assert old is not None
    injector = Injector(lab)
    with NetnsLoop(lab.layout.client.netns) as loop:
        session, clients = loop.run(_connect(f"http://{vip}:{PROXY_PORT}/echo", CLIENTS))
        try:
            assert {c.via for c in clients} == {old}
            try:  # held past the lease: until another node holds the VIP
                injector.inject(Fault(1, kind, old, 0.0))
                eventually(lambda: _held_elsewhere(lab, vip, old), 30, f"{vip} to leave {old}")
            finally:
                injector.heal()
            received = loop.run(_last_words(clients, LAST_WORDS), timeout=LAST_WORDS + 10)
        finally:
            loop.run(session.close())
    assert received == ["CLOSE 1001"] * CLIENTS, f"{old}'s clients after {kind}: {received}"


# ---- clients that reach a proxy while it restarts ----

RESTART_CLIENTS = 6
SERVED_AFTER_RESTART = 15.0  # s after the restarted proxy is live (about 1 s in a quiet lab)
DOWN = LINGER + 3.0  # s the proxy stays down: past the window its first closes had


def test_clients_that_reach_a_restarting_proxy_are_served_once_it_is_back(
    lab: control.Lab,
) -> None:
    """The VIP holder's proxy is stopped (SIGTERM: its WebSockets get 1001 and reconnect at
    once, into the listening queue, since the VIP is still there) and started again. The
    queue outlives the proxy, as haproxy-py.socket's does; the VIP has moved meanwhile, so
    the next proxy answers those clients from an address the node released: they must be
    told to go, not left waiting for answers the fence drops. The proxy stays down past
    the window the fence let its first closes out in, and the cluster is paused once the
    VIP has moved, so that no failback brings the VIP back and hides the hang."""
    vip = lab.layout.vips[0]
    old = settle(lab).owner(vip)
    assert old is not None
    injector = Injector(lab)
    stats, stop = WsStats(), asyncio.Event()
    url = f"http://{vip}:{PROXY_PORT}/echo"
    with NetnsLoop(lab.layout.client.netns) as loop:
        load = loop.submit(ws_load([url], RESTART_CLIENTS, 0.1, 300, stop, stats))
        try:
            eventually(lambda: stats.echoes >= 3 * RESTART_CLIENTS, 30, "echoes before the stop")
            try:
                injector.inject(Fault(1, "term-proxy", old, 0.0))
                eventually(lambda: _held_elsewhere(lab, vip, old), 30, f"{vip} to leave {old}")
                _hactl(lab, "pause")
                time.sleep(DOWN)
            finally:
                injector.heal()
            try:
                eventually(lambda: _proxy_live(lab, old), 60, f"{old}'s proxy live again")
                live = time.monotonic()
                eventually(
                    lambda: not stats.behind(live),
                    SERVED_AFTER_RESTART,
                    "every WebSocket client served again",
                    detail=lambda: [what for _, _, what in stats.behind(live)],
                )
            finally:
                _hactl(lab, "resume")
        finally:
            loop.loop.call_soon_threadsafe(stop.set)
            load.result(30)
    assert not stats.problems, stats.problems


def _proxy_live(lab: control.Lab, node: str) -> bool:
    current = view(lab)
    record = current.nodes.get(node) if current is not None else None
    return record is not None and record.healthy


# ---- manual placements in active-active ----


def test_manual_placements_on_one_node_are_spread_again_after_failback_hold(
    lab: control.Lab,
) -> None:
    """Both VIPs moved by hand onto one node stay there for `failback_hold`, then the
    rebalancing spreads them again (before, two manual placements blocked it for good).
    The moves are made while paused, so that no rebalancing races them."""
    first = settle(lab)
    vip, target = lab.layout.vips[0], first.owner(lab.layout.vips[1])
    assert target is not None and first.owner(vip) != target
    _hactl(lab, "pause")
    try:
        _hactl(lab, "failover", "--vip", vip, "--to", target, "-y")
        moved_at = time.monotonic()
        _hactl(lab, "failover", "--vip", lab.layout.vips[1], "--to", _other(lab, target), "-y")
        _hactl(lab, "failover", "--vip", lab.layout.vips[1], "--to", target, "-y")
        placed = view(lab)
        assert placed is not None
        assert [placed.vips[v].cause for v in lab.layout.vips] == ["manual", "manual"]
        assert placed.vips_of(target) == tuple(sorted(lab.layout.vips))
    finally:
        _hactl(lab, "resume")

    def spread() -> bool:
        current = view(lab)
        return current is not None and all(current.vips_of(n.name) for n in lab.layout.nodes)

    eventually(spread, FAILBACK_HOLD + 30, "the VIPs spread over both nodes again")
    assert time.monotonic() - moved_at >= FAILBACK_HOLD - 0.5, "a manual placement was not pinned"


def _hactl(lab: control.Lab, *args: str) -> None:
    done = lab.hactl(*args)
    assert done.returncode == 0, f"hactl {' '.join(args)}: {done.stdout}{done.stderr}"


def _other(lab: control.Lab, node: str) -> str:
    return next(n.name for n in lab.layout.nodes if n.name != node)


# ---- the checker's own failure case ----


class SecondAnswerer(Injector):
    """Every fault also puts the first VIP on a stand-in host of the bridge, by hand, until
    the heal: a second machine answering ARP for it, as a broken fence would let a node."""

    def __init__(self, lab: control.Lab, rogue: netns.Host) -> None:
        super().__init__(lab)
        self.rogue = rogue

    def _inject(self, kind: str, target: str) -> Heal:
        heal = super()._inject(kind, target)
        vip = self.lab.layout.vips[0]
        netns.ip("addr", "add", f"{vip}/32", "dev", "eth0", netns=self.rogue.netns)

        def both() -> None:
            netns.ip("addr", "del", f"{vip}/32", "dev", "eth0", netns=self.rogue.netns)
            for where in (None, self.lab.layout.client.netns):  # forget the stand-in's MAC
                netns.ip("neigh", "flush", "to", vip, netns=where, check=False)
            heal()

        return both


def test_a_second_host_answering_for_a_vip_is_caught(lab: control.Lab) -> None:
    net = ipaddress.ip_network(lab.layout.subnet)
    rogue = lab.plumbing.add_host("rogue", f"{net[240]}/{lab.layout.prefixlen}")
    run = Run(lab, Options(seed=5, faults=2, clients=2, kinds=("pause",)), print)
    run.injector = SecondAnswerer(lab, rogue)
    report = run.execute()
    print(report.text())
    caught = [v for v in report.violations if v.invariant == "two-answering"]
    assert caught, (report.violations, report.stopped_early)
    assert [v.fault for v in caught] == ["#1 pause", "#2 pause"]  # once per fault, attributed
    assert lab.layout.vips[0] in caught[0].evidence
    assert not report.passed


# ---- Ctrl-C ----

HACTL = str(Path(sys.executable).parent / "hactl")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_ctrl_c_stops_a_run_and_removes_the_lab_it_brought_up(
    tmp_path: Path, sig: signal.Signals
) -> None:
    """SIGINT (Ctrl-C) or SIGTERM in the middle of a run on a lab the command brought up
    itself, twice (as an impatient operator presses it): it heals the fault in force, stops
    the load, removes the lab (namespaces, links, processes) and still writes the report so
    far, marked as interrupted; the exit status is 1. The second signal lands in the
    clean-up, which must not be cut short by it."""
    prefix = "hl" + secrets.token_hex(2) + "-"
    run_dir, report = tmp_path / "lab", tmp_path / "report.json"
    argv = [HACTL, "lab", "--run-dir", str(run_dir), "chaos", "--mode", "active-standby"]
    argv += ["--prefix", prefix, "--faults", "50", "--clients", "2", "--seed", "5"]
    argv += ["--report", str(report)]
    lines: list[str] = []
    with subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        preexec_fn=_as_from_a_terminal,
    ) as run:
        assert run.stdout is not None
        reader = threading.Thread(target=lambda: lines.extend(run.stdout or ()), daemon=True)
        reader.start()
        try:
            eventually(lambda: any(" #2 " in line for line in lines), 300, "the second fault")
            interrupted = time.monotonic()
            run.send_signal(sig)
            time.sleep(0.05)
            run.send_signal(sig)
            run.wait(timeout=120)
            took = time.monotonic() - interrupted
        finally:
            if run.poll() is None:
                run.kill()
                control.down(run_dir)
        reader.join(10)
    output = "".join(lines)
    assert run.returncode == 1, output
    assert "STOPPED EARLY: interrupted" in output
    doc = json.loads(report.read_text())
    assert doc["stopped_early"] == "interrupted" and len(doc["outcomes"]) >= 1, doc
    assert netns.leftovers(prefix) == []
    assert not (run_dir / "netns.json").exists() and not (run_dir / "lab.json").exists()
    assert _processes_of(run_dir) == []
    print(f"stopped {took:.1f} s after {sig.name}")


def _as_from_a_terminal() -> None:
    """Ctrl-C reaches a command started at a terminal; a suite run in the background (as
    `make test` runs the lab tier) passes SIGINT on ignored, which the command honours."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _processes_of(run_dir: Path) -> list[str]:
    """Command lines of the live processes that name the run directory (the lab's daemons)."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            text = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if str(run_dir) in text:
            found.append(text)
    return found
