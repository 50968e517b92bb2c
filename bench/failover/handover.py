"""`python -m bench.failover.handover`: do planned moves close every WebSocket with 1001?

Issue-23 measurement on the lab of `bench.failover`: 50 WebSocket echo clients
on the VIP (10 idle, 20 sending a frame every 100 ms, 20 sending continuously:
send, wait for the echo, send again) through 20 planned moves, first made with
`hactl failover`, then with the active agent's clean stop (SIGTERM, as
`systemctl stop ha-agent` sends; the agent is started again after each move).
Per class: clients that got 1001, connections that ended with a reset (no close
frame), and the time from the 1001 to the reconnected client's first echo
(p50, p95, max). Results in bench/results/handover.{json,md}. keepalived has
no equivalent (its old node keeps no state to close), so only haproxy-py runs.
`--throttle` starves the old node's proxy (a cgroup CPU quota) during each move
and `--sockets` lists its sockets on the VIP meanwhile: how the resets of a
loaded machine were reproduced and explained (bench/README.md).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import ipaddress
import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from bench.failover import stacks
from bench.failover.stats import summarize
from bench.failover.throttle import Throttle, ThrottleError
from bench.failover.wire import SPANS, summarize_wire
from haproxy_py.lab import control, netns
from haproxy_py.lab.echoclients import read
from haproxy_py.lab.layout import APP_PORT, PROXY_PORT
from haproxy_py.lab.netns import Proc

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "bench" / "results"
RUN_DIR = Path("/run/haproxy-py/bench-handover")
CLASSES = {"idle": 10, "periodic": 20, "continuous": 20}
CAUSES = ("hactl failover", "agent clean stop")
CAUSE_OPTIONS = {"failover": CAUSES[0], "stop": CAUSES[1]}
# When the old node's sockets on the VIP are listed after a move starts (`--sockets`): before
# and after its let-out, and before the new owner's grace ends.
SNAPSHOTS = (0.5, 1.5, 3.0, 4.5)
# Client processes, each with its share of every class: 50 clients are 50 browsers, not one
# Python loop that would serialize their reconnects behind each other's.
FLEETS = 5
FIRST_HOST = 150  # client source addresses from .150 of the lab subnet (free in its plan)
# Where a reconnect's time goes, from the client's side: its own loop (1001 -> connect started),
# the TCP handshake (SYN to the new owner, ARP, accept queue), the WebSocket handshake through
# the proxy (request, upstream connect, the backend's 101) and the first echo.
PHASES = (("loop", "closed", "started"), ("tcp", "started", "tcp"), ("upgrade", "tcp", "connected"))


def summarize_events(events: Iterable[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per class: closes with 1001, connections ended without a close frame, and the time from
    each 1001 to that client's first echo (idle clients: its reconnection) on a new connection
    (pure)."""
    by_client: dict[int, list[dict[str, Any]]] = {}
    for event in events:
        by_client.setdefault(int(event["client"]), []).append(event)
    result: dict[str, dict[str, Any]] = {}
    for kind in CLASSES:
        closes = resets = 0
        latencies: list[float] = []
        phases: dict[str, list[float]] = {name: [] for name, _, _ in PHASES}
        for client_events in by_client.values():
            if not client_events or client_events[0]["class"] != kind:
                continue
            wanted = "connected" if kind == "idle" else "echo"
            for i, event in enumerate(client_events):
                if event["event"] == "error":
                    resets += 1
                elif event["event"] == "closed" and event["code"] == 1001:
                    closes += 1
                    later = [e for e in client_events[i + 1 :] if e["event"] == wanted]
                    if later:
                        latencies.append(later[0]["at"] - event["at"])
                    back = [e for e in client_events[i + 1 :] if e["event"] == "connected"]
                    if back and "tcp" in back[0]:
                        times = {"closed": event["at"], **back[0]}
                        times["connected"] = back[0]["at"]
                        for name, start, end in PHASES:
                            phases[name].append(times[end] - times[start])
        summary = summarize([round(x * 1000, 1) for x in latencies]).as_dict()
        result[kind] = {
            "closed_1001": closes,
            "reset": resets,
            "reconnect_ms": summary,
            "phases_ms": {
                name: summarize([round(x * 1000, 1) for x in values]).as_dict()
                for name, values in phases.items()
            },
        }
    return result


def render(doc: dict[str, Any]) -> str:
    lines = [
        "# Planned moves: WebSocket clients closed with 1001",
        "",
        f"{doc['moves']} moves per cause, {sum(CLASSES.values())} clients "
        f"({', '.join(f'{n} {k}' for k, n in CLASSES.items())}) from "
        f"{doc.get('hosts', 1)} source addresses in {FLEETS} processes; {doc['meta']}"
        + (f"; {doc['throttle']}" if "throttle" in doc else ""),
        "",
        "| cause | class | 1001 | reset | 1001 → first echo p50 / p95 / max (ms) "
        "| client loop / TCP / upgrade p95 (ms) | load average |",
        "|---|---|---|---|---|---|---|",
    ]
    for cause, classes in doc["results"].items():
        load = doc.get("load", {}).get(cause, "-")
        for kind, row in classes.items():
            r = row["reconnect_ms"]
            times = " / ".join(_ms(r.get(key)) for key in ("p50", "p95", "max"))
            parts = row.get("phases_ms", {})
            split = " / ".join(_ms(parts.get(name, {}).get("p95")) for name, _, _ in PHASES)
            lines.append(
                f"| {cause} | {kind} | {row['closed_1001']} | {row['reset']} | {times} "
                f"| {split} | {load} |"
            )
    lines += [
        "",
        "On the client's wire (every connection opened during the moves; p50 / p95 ms):",
        "",
        "| cause | connections (clients' count) | unanswered | SYN retransmits | SYN → SYN-ACK "
        "| SYN-ACK → upgrade request (client) | request → 101 (proxy + backend) "
        "| of which the backend's | frames the capture dropped |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for cause, wire in doc.get("wire", {}).items():
        spans = " | ".join(
            f"{_ms(wire['ms'][name].get('p50'))} / {_ms(wire['ms'][name].get('p95'))}"
            for name, _, _ in SPANS
        )
        backend = wire.get("backend_ms", {})
        lines.append(
            f"| {cause} | {wire['connections']} ({wire.get('reconnects', '-')}) "
            f"| {wire.get('unanswered', '-')} | {wire['syn_retransmits']} | {spans} "
            f"| {_ms(backend.get('p50'))} / {_ms(backend.get('p95'))} "
            f"| {wire.get('capture_dropped', '-')} |"
        )
    return "\n".join(lines) + "\n"


def _ms(value: object) -> str:
    return f"{value:.0f}" if isinstance(value, int | float) else "-"


def _events(outs: list[Path]) -> list[dict[str, Any]]:
    """Every fleet's events, each client numbered across the fleets."""
    per_fleet = sum(CLASSES.values()) // len(outs)
    return [
        {**event, "client": i * per_fleet + int(event["client"])}
        for i, out in enumerate(outs)
        for event in read(str(out))
    ]


def _all_back(outs: list[Path], node: str, after: float) -> bool:
    events = _events(outs)
    connected = {e["client"] for e in events if e["at"] >= after and e["event"] == "connected"}
    on_node = {
        e["client"]
        for e in events
        if e["at"] >= after and e["event"] == "connected" and e["via"] == node
    }
    return len(on_node) == len(connected) == sum(CLASSES.values())


def client_hosts(lab: control.Lab, hosts: int) -> list[list[str]]:
    """Source addresses per fleet: `hosts` addresses added to the client namespace, so that the
    lab's source-hash balancing spreads the clients over the demo backends as clients on that
    many hosts would be spread ([] per fleet: the namespace's own address)."""
    if hosts <= 1:
        return [[] for _ in range(FLEETS)]
    net = ipaddress.ip_network(lab.layout.subnet)
    addresses = [str(net[FIRST_HOST + i]) for i in range(hosts)]
    for address in addresses:
        netns.ip(
            "addr",
            "replace",
            f"{address}/{net.prefixlen}",
            "dev",
            "eth0",
            netns=lab.layout.client.netns,
        )
    return [addresses[i::FLEETS] for i in range(FLEETS)]


def stop_captures(lab: control.Lab, captures: list[Proc]) -> None:
    """SIGTERM: each capture reads what is still queued and writes its drop count."""
    for proc in captures:
        lab.plumbing.kill(proc, signal.SIGTERM)
    with contextlib.suppress(stacks.BenchError):
        stacks.wait_until(
            lambda: not any(lab.plumbing.alive(p) for p in captures), 10, "captures ended"
        )
    for proc in captures:
        lab.plumbing.kill(proc)


def snapshot_sockets(netns: str, vip: str, out: Path, started: float) -> threading.Thread:
    """In the background: `ss -tin` of `netns`'s TCP sockets from `vip` at each of SNAPSHOTS
    seconds after `started` (unacked, not sent, retransmits and cwnd of each connection)."""

    def run() -> None:
        with out.open("a") as log:
            for at in SNAPSHOTS:
                time.sleep(max(0.0, started + at - time.monotonic()))
                listing = subprocess.run(
                    ["ip", "netns", "exec", netns, "ss", "-tinoH", "src", vip],
                    capture_output=True,
                    text=True,
                    check=False,
                )
                log.write(f"--- {at:.1f} s\n{listing.stdout}")

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def measure(
    lab: control.Lab,
    cause: str,
    moves: int,
    work: Path,
    hosts: int,
    throttle: Throttle | None = None,
    sockets: bool = False,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Per class (`summarize_events`) and on the wire (`wire.summarize_wire`). With `throttle`,
    the old node's proxy runs under its CPU quota during each move; with `sockets`, its
    sockets on the VIP are listed during each move (`snapshot_sockets`)."""
    stack = stacks.HaproxyPy(lab)
    stack.start()
    outs = [work / f"echo-{cause.replace(' ', '-')}-{i}.out" for i in range(FLEETS)]
    counts = [str(CLASSES[k] // FLEETS) for k in CLASSES]
    url = f"http://{stack.vip}:{PROXY_PORT}/echo"
    sources = client_hosts(lab, hosts)
    segments = work / f"wire-{cause.replace(' ', '-')}.out"
    captures: list[Proc] = []
    opened = math.inf  # when the captures were open: the connections they should all see

    def upstream(app: str) -> Path:
        return work / f"wire-{cause.replace(' ', '-')}-{app}.out"

    fleets = [
        lab.plumbing.spawn(
            lab.layout.client.netns,
            [
                sys.executable,
                *("-m", "haproxy_py.lab.echoclients"),
                *(["--sources", ",".join(sources[i])] if sources[i] else []),
                *(url, "3600", str(out), *counts),
            ],
            label=f"echoclients-{i}",
            log=work / f"echoclients-{i}.log",
            cwd=ROOT,
        )
        for i, out in enumerate(outs)
    ]
    try:
        active = stack.settle()
        stacks.wait_until(lambda: _all_back(outs, active, 0), 120, "every client connected")
        captures = [
            lab.plumbing.spawn(
                where.netns,
                [sys.executable, "-m", "bench.failover.wire", address, str(port), "3600", str(out)],
                label=f"wire-{where.name}",
                log=work / "wire.log",
                cwd=ROOT,
            )
            for where, address, port, out in [
                (lab.layout.client, stack.vip, PROXY_PORT, segments),
                *((app, app.address, APP_PORT, upstream(app.name)) for app in lab.layout.apps),
            ]
        ]
        time.sleep(0.5)  # the capture socket is open
        opened = time.monotonic()
        for move in range(moves):
            active = stack.settle()
            target = stack.other(active)
            if throttle is not None:
                for proc in lab.plumbing.procs(f"{active}/proxy"):
                    throttle.add(proc.pid)
            started = time.monotonic()
            if sockets:
                listing = work / f"ss-{cause.replace(' ', '-')}-{move}.txt"
                snapshot_sockets(lab.layout.node(active).netns, stack.vip, listing, started)
            if cause == "hactl failover":
                stack.inject("planned", active)
            else:
                stack.terminate(active, ("agent",))
            back = functools.partial(_all_back, outs, target, started)
            stacks.wait_until(back, 60, f"move {move}: every client back")
            if throttle is not None:
                throttle.release()
            if cause != "hactl failover":
                lab.start_node(active, ("agent",))
            print(f"{cause} #{move}: {active} -> {target}", flush=True)
    finally:
        for proc in fleets:
            lab.plumbing.kill(proc)
        stop_captures(lab, captures)
        stack.stop()
        stack.close()
    wire = summarize_wire(read(str(segments)))
    backends = [s for app in lab.layout.apps for s in read(str(upstream(app.name)))]
    wire["backend_ms"] = summarize_wire(backends)["ms"]["server"]
    events = _events(outs)
    wire["reconnects"] = sum(1 for e in events if e["event"] == "connected" and e["at"] >= opened)
    return summarize_events(events), wire


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.failover.handover", description=__doc__)
    parser.add_argument("--moves", type=int, default=20)
    parser.add_argument(
        "--hosts",
        type=int,
        default=sum(CLASSES.values()),
        help="client source addresses (default: one per client; 1: all from one address, "
        "which the lab's source-hash balancing sends to one demo backend)",
    )
    parser.add_argument(
        "--causes",
        default=",".join(CAUSE_OPTIONS),
        help="which causes of a move, comma-separated: failover (hactl failover), "
        "stop (the agent's clean stop); default both",
    )
    parser.add_argument(
        "--throttle",
        type=int,
        metavar="PERCENT",
        help="hold the old node's proxy to PERCENT of one CPU during each move (a cgroup cpu "
        "quota on its processes alone): a starved proxy without loading the machine",
    )
    parser.add_argument(
        "--sockets",
        action="store_true",
        help="list the old node's TCP sockets on the VIP (ss -tin) during each move, into "
        "the lab's logs",
    )
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    names = [c.strip() for c in args.causes.split(",") if c.strip()]
    unknown = [c for c in names if c not in CAUSE_OPTIONS]
    if unknown or not names:
        print(
            f"bench.failover.handover: --causes {args.causes!r}: expected a comma-separated "
            f"list of {', '.join(CAUSE_OPTIONS)}",
            file=sys.stderr,
        )
        return 2
    if args.throttle is not None and not 1 <= args.throttle <= 100:
        print("bench.failover.handover: --throttle: a percentage from 1 to 100", file=sys.stderr)
        return 2
    problem = control.missing_requirements()
    if problem is not None:
        print(f"bench.failover.handover: {problem}", file=sys.stderr)
        return 2
    control.down(RUN_DIR)
    doc: dict[str, Any] = {
        "moves": args.moves,
        "hosts": args.hosts,
        "meta": time.strftime("%Y-%m-%d %H:%M UTC"),
    }
    if args.throttle is not None:
        doc["throttle"] = f"old node's proxy held to {args.throttle} % of one CPU during each move"
    doc["results"] = {}
    throttle: Throttle | None = None
    try:
        if args.throttle is not None:
            throttle = Throttle("hh-handover-bench", args.throttle)
        lab = control.Lab.up(run_dir=RUN_DIR, prefix="hh-", nodes=2, say=print)
        doc["load"], doc["wire"] = {}, {}
        for cause in (CAUSE_OPTIONS[name] for name in names):
            before = os.getloadavg()[0]
            found = measure(
                lab, cause, args.moves, lab.paths.logs, args.hosts, throttle, args.sockets
            )
            doc["results"][cause], doc["wire"][cause] = found
            doc["load"][cause] = f"{before:.1f}-{os.getloadavg()[0]:.1f}"
    except (control.LabError, stacks.BenchError, ThrottleError) as exc:
        print(f"bench.failover.handover: {exc}", file=sys.stderr)
        return 1
    finally:
        if throttle is not None:
            throttle.close()
        control.down(RUN_DIR, keep_logs=True)
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "handover.json").write_text(json.dumps(doc, indent=1) + "\n")
    (args.results / "handover.md").write_text(render(doc))
    print(render(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
