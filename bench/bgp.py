"""`python -m bench.bgp`: BGP mode in the lab, first figures (root, BIRD 2).

A 4-node BGP lab (`haproxy_py.lab.bgplab`, prefix `hbgpb-`) and:

- spread: `--connections` new connections from the client through the router
  (layer-4 ECMP hash); target: every node within +/-15 % of the mean;
- withdrawal: from a fault on one node until the router's kernel route has
  lost that node's next hop, `--repeats` trials per fault, nodes in turn:
  the proxy SIGKILLed (target p95 0.3 s), the proxy SIGKILLed while the
  node's announcer is SIGSTOPped (target 1 s), the proxy hung (SIGSTOP, seen
  by the announcer's probe), and the node's link cut (seen by BFD, 100 ms x 3).

Writes bench/results/bgp.{json,md}. Everything is removed at the end, also on
failure; every loop is bounded in count and time.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.failover.stats import percentile
from haproxy_py.lab import bgplab, control, ecmp, netns
from haproxy_py.lab.client import Attempt, NetnsLoop, Probe
from haproxy_py.lab.control import Lab
from haproxy_py.lab.layout import PROXY_PORT

RESULTS = Path(__file__).resolve().parent / "results"
PREFIX = "hbgpb-"
RUN_DIR = Path("/tmp/haproxy-py-bench-bgp")
SPREAD_TOLERANCE = 0.15
SETTLE = 30.0


def signal_label(lab: Lab, label: str, sig: int) -> None:
    for proc in lab.plumbing.procs(label):
        if lab.plumbing.alive(proc):
            os.kill(proc.pid, sig)


def link(lab: Lab, node: str, state: str) -> None:
    """The node's port on the bridge (the host end of its veth) down or up: a cut cable."""
    netns.ip("link", "set", lab.layout.node(node).netns, state)


Step = Callable[[str], object]


def faults(lab: Lab) -> dict[str, tuple[Step, Step, Step]]:
    """Name -> (before the clock starts, the fault, the repair), each on one node."""

    def nothing(node: str) -> None:
        pass

    def freeze_announcer(node: str) -> None:
        signal_label(lab, f"{node}/agent", signal.SIGSTOP)
        time.sleep(1.0)  # frozen well before the proxy dies

    def restart(node: str) -> None:
        signal_label(lab, f"{node}/agent", signal.SIGCONT)
        signal_label(lab, f"{node}/proxy", signal.SIGCONT)
        lab.restart(node)

    def kill_proxy(node: str) -> None:
        signal_label(lab, f"{node}/proxy", signal.SIGKILL)  # not lab.kill: it waits to reap

    def kill_node(node: str) -> None:
        for process in bgplab.PROCESSES:
            signal_label(lab, f"{node}/{process}", signal.SIGKILL)

    return {
        "proxy SIGKILL": (nothing, kill_proxy, restart),
        "proxy SIGKILL, announcer frozen": (freeze_announcer, kill_proxy, restart),
        "node SIGKILL (every process)": (nothing, kill_node, restart),
        "proxy hung (SIGSTOP)": (
            nothing,
            lambda n: signal_label(lab, f"{n}/proxy", signal.SIGSTOP),
            restart,
        ),
        "link cut (BFD)": (nothing, lambda n: link(lab, n, "down"), lambda n: link(lab, n, "up")),
    }


def settled(lab: Lab) -> bool:
    return bgplab.ready(lab) and set(bgplab.bfd_states(lab).values()) == {"Up"}


def wait(lab: Lab) -> None:
    control.wait_for(lambda: settled(lab), SETTLE, "every path and BFD session back", None)


def failing(attempts: list[Attempt], fault: float) -> float:
    """(pure: no I/O, no clock) Seconds from the fault to the start of the last new
    connection that failed after it (0: none failed)."""
    failed = [a.start - fault for a in attempts if a.start >= fault and a.node is None]
    return max(failed, default=0.0)


def withdrawal_trials(
    lab: Lab, repeats: int, loop: NetnsLoop
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Per fault: router withdrawal times, and how long new connections failed."""
    found: dict[str, list[float]] = {}
    client: dict[str, list[float]] = {}
    nodes = [n.name for n in lab.layout.nodes]
    for name, (before, fault, repair) in faults(lab).items():
        times = found.setdefault(name, [])
        windows = client.setdefault(name, [])
        for i in range(repeats):
            node = nodes[i % len(nodes)]
            wait(lab)
            time.sleep(0.5)  # BFD and BGP quiet before the fault
            before(node)
            probe = Probe(lab.layout.vips[0], PROXY_PORT, interval=0.005, limit=30)
            running = loop.submit(probe.run())
            time.sleep(0.3)
            at, took = ecmp.withdrawal(lab, node, functools.partial(fault, node))
            time.sleep(1.5)  # a SYN lost on a cut link fails after the probe's 1 s timeout
            loop.loop.call_soon_threadsafe(probe.stop)
            window = failing(running.result(30), at)
            times.append(took)
            windows.append(window)
            repair(node)
            print(
                f"  {name} on {node}: {took * 1000:.0f} ms, clients failed {window * 1000:.0f} ms",
                flush=True,
            )
    return found, client


def summary(values: list[float]) -> dict[str, Any]:
    ms = [v * 1000 for v in values]
    return {
        "n": len(ms),
        "p50_ms": percentile(ms, 50),
        "p95_ms": percentile(ms, 95),
        "max_ms": max(ms, default=None),
    }


def table(rows: dict[str, dict[str, Any]]) -> list[str]:
    return [
        "| fault | n | p50 ms | p95 ms | max ms |",
        "|---|---|---|---|---|",
        *(
            f"| {name} | {s['n']} | {s['p50_ms']:.0f} | {s['p95_ms']:.0f} | {s['max_ms']:.0f} |"
            for name, s in rows.items()
        ),
    ]


def markdown(doc: dict[str, Any]) -> str:
    spread = doc["spread"]
    lines = [
        "# BGP mode: spread over ECMP and withdrawal times (first figures)",
        "",
        f"Run {doc['when']} on {doc['host']} ({doc['cpus']} CPUs, load average "
        f"{doc['load']:.1f} at the start): a 4-node BGP lab (BIRD {doc['bird']}, eBGP to one "
        "router namespace running BIRD with `merge paths`, `fib_multipath_hash_policy = 1`, "
        "BFD 100 ms x 3, hold time 9 s).",
        "",
        f"## Spread: {spread['connections']} new connections from the client",
        "",
        "| node | connections | vs mean |",
        "|---|---|---|",
        *(
            f"| {node} | {count} | {100 * (count - spread['mean']) / spread['mean']:+.1f} % |"
            for node, count in sorted(spread["counts"].items())
            if node != ecmp.FAILED
        ),
        "",
        f"Worst deviation {100 * spread['worst']:.1f} % (target: within 15 %): "
        f"{'met' if spread['worst'] <= SPREAD_TOLERANCE else 'NOT met'}; "
        f"{spread['failed']} failed.",
        "",
        "## Withdrawal: from the fault until the router's kernel route lacks the node",
        "",
        *table(doc["withdrawal"]),
        "",
        "## New connections failing: from the fault to the last failed new connection",
        "",
        *table(doc["clients_failing"]),
        "",
        "A probe in the client namespace opens a new connection every 5 ms (GET /whoami, "
        "1 s timeout); about one in four goes to the faulty node until the router drops it. "
        "The router's route is read with `ip -j route` in its namespace in a loop (about 3 ms "
        "per read: the resolution). Proxy SIGKILL: the proxy's live link (a TUN device it "
        "holds) disappears with it and BIRD's `check link` withdraws the static route; no "
        "agent involved, which is why the frozen announcer changes nothing. Proxy hung: the "
        "announcer's probe (every 100 ms, timeout 200 ms, 3 misses) sets the live link down. "
        "Link cut: the node's bridge port down; BFD's 300 ms detection at the router.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.bgp", description=__doc__.split("\n")[0])
    parser.add_argument("--connections", type=int, default=4000)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--out", type=Path, default=RESULTS / "bgp")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("stopped by SIGTERM"))  # runs `finally`
    control.down(RUN_DIR)  # what a killed earlier run left
    load = os.getloadavg()[0]
    lab = control.Lab.up(run_dir=RUN_DIR, prefix=PREFIX, nodes=4, mode="bgp", say=print)
    try:
        wait(lab)
        print(f"spread: {args.connections} connections", flush=True)
        counts = ecmp.spread(lab, args.connections)
        judged = ecmp.judge(counts, [n.name for n in lab.layout.nodes])
        print(f"  {counts}, worst {100 * judged.worst:.1f} %", flush=True)
        with NetnsLoop(lab.layout.client.netns) as loop:
            trials, client = withdrawal_trials(lab, args.repeats, loop)
        bird_version = bgplab.router_query(lab, "show status").lines[0].split()[1]
    finally:
        control.down(RUN_DIR)
    doc = {
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "load": load,
        "bird": bird_version,
        "spread": {
            "connections": args.connections,
            "counts": counts,
            "mean": judged.mean,
            "worst": judged.worst,
            "failed": judged.failed,
        },
        "withdrawal": {name: summary(v) for name, v in trials.items()},
        "clients_failing": {name: summary(v) for name, v in client.items()},
        "raw_ms": {name: [round(v * 1000, 1) for v in vs] for name, vs in trials.items()},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(doc, indent=1) + "\n")
    args.out.with_suffix(".md").write_text(markdown(doc))
    print(markdown(doc))


if __name__ == "__main__":
    main()
