"""`python -m bench.failover.etcdfaults`: what clients see when etcd itself fails (issue 16).

Two faults on the lab of `bench.failover` (3 etcd members, 2 proxy nodes), each with the
lab's client probe (a new connection to the VIP every 10 ms from the client namespace)
and the two-owners watcher running:

* `etcd-leader`: SIGKILL of the etcd leader member, watched for 6 s, then restarted;
* `etcd-all`: every etcd member stopped for `--outage` seconds (default 15), then
  started again; watched until the cluster has settled.

Per trial: the longest client outage (last answer before failures to the next answer),
failed probe connections, the time the VIP was on no node or on two, and whether it
moved. The failsafe (`agent.failsafe`) is what keeps the VIP through both. keepalived
has no etcd, so its row says so. Results in bench/results/etcdfaults.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from bench.failover import stacks
from bench.failover.stats import dual_time, summarize
from haproxy_py.lab import control
from haproxy_py.lab.client import NetnsLoop, Probe, longest_outage
from haproxy_py.lab.etcdstatus import etcd_status
from haproxy_py.lab.layout import PROXY_PORT
from haproxy_py.lab.watch import TwoOwnersWatcher

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "bench" / "results"
RUN_DIR = Path("/run/haproxy-py/bench-etcdfaults")


def absent_ms(changes: list[tuple[float, str, frozenset[str]]], vip: str, since: float) -> float:
    """Milliseconds the VIP was on no node after `since` (wall clock of the watcher)."""
    total, gone = 0.0, None
    for at, changed, nodes in changes:
        if changed != vip or at < since:
            continue
        if not nodes and gone is None:
            gone = at
        elif nodes and gone is not None:
            total, gone = total + at - gone, None
    return round(total * 1000, 1)


def trial(stack: stacks.HaproxyPy, fault: str, outage: float, loop: NetnsLoop) -> dict[str, Any]:
    lab = stack.lab
    old = stack.settle()
    probe = Probe(stack.vip, PROXY_PORT, interval=0.01, timeout=1.0, limit=outage + 120)
    running = loop.submit(probe.run())
    nodes = {n.name: n.netns for n in lab.layout.nodes}
    watcher = TwoOwnersWatcher(nodes, {stack.vip}, interval=0.003).__enter__()
    time.sleep(1.0)
    fault_at, fault_wall = time.monotonic(), time.time()
    killed: list[str] = []
    try:
        if fault == "etcd-leader":
            stacks.wait_until(lambda: _leader(lab) is not None, 30, "an etcd leader")
            killed = lab.kill(_leader(lab) or "")
            time.sleep(6.0)
        else:
            for member in lab.layout.etcd:
                killed += lab.kill(member.name)
            time.sleep(outage)
        for name in killed:
            lab.restart(name)
        stacks.wait_until(lab.etcd_healthy, 60, "etcd to be healthy again")
        new = stack.settle()
        time.sleep(3.0)
    finally:
        loop.loop.call_soon_threadsafe(probe.stop)
        watch = watcher.stop()
        end_wall = time.time()
        attempts = running.result(timeout=60)
        for name in killed:
            lab.restart(name)
    dual = dual_time(watch.changes, [v.at for v in watch.violations], fault_wall, end_wall)
    after = [a for a in attempts if a.start >= fault_at]
    return {
        "fault": fault,
        "old": old,
        "new": new,
        "moved": new != old,
        "outage_ms": round(longest_outage(attempts, fault_at) * 1000, 1),
        "failed": sum(1 for a in after if a.node is None),
        "attempts": len(after),
        "absent_ms": absent_ms(watch.changes, stack.vip, fault_wall),
        "dual_ms": round(dual.seconds * 1000, 1),
    }


def _leader(lab: control.Lab) -> str | None:
    try:
        return etcd_status(lab).leader
    except Exception:  # any member not answering yet (gRPC raises its own errors)
        return None


def render(doc: dict[str, Any]) -> str:
    lines = [
        f"# etcd faults ({doc['meta']}; {doc['repeats']} trials each, full outage "
        f"{doc['outage']:g} s)",
        "",
        "| stack | fault | client outage ms p50 / max | failed probes | VIP absent ms max "
        "| dual ms | moves |",
        "|---|---|---|---|---|---|---|",
    ]
    for fault, title in stacks.ETCD_FAULT_TITLES.items():
        rows = [t for t in doc["trials"] if t["fault"] == fault]
        s = summarize(t["outage_ms"] for t in rows).as_dict()
        lines.append(
            f"| haproxy-py | {title} | {s['p50']} / {s['max']} | "
            f"{sum(t['failed'] for t in rows)} of {sum(t['attempts'] for t in rows)} | "
            f"{max((t['absent_ms'] for t in rows), default=0)} | "
            f"{sum(t['dual_ms'] for t in rows)} | {sum(t['moved'] for t in rows)} |"
        )
        lines.append(f"| keepalived | {title} | keepalived has no etcd: not applicable | | | | |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.failover.etcdfaults", description=__doc__
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--outage", type=float, default=15.0)
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    problem = control.missing_requirements()
    if problem is not None:
        print(f"bench.failover.etcdfaults: {problem}", file=sys.stderr)
        return 2
    control.down(RUN_DIR)
    doc: dict[str, Any] = {
        "meta": time.strftime("%Y-%m-%d %H:%M UTC"),
        "repeats": args.repeats,
        "outage": args.outage,
        "trials": [],
    }
    try:
        lab = control.Lab.up(run_dir=RUN_DIR, prefix="he-", nodes=2, say=print)
        stack = stacks.HaproxyPy(lab)
        with NetnsLoop(lab.layout.client.netns) as loop:
            for fault in stacks.ETCD_FAULT_TITLES:
                for repeat in range(args.repeats):
                    row = trial(stack, fault, args.outage, loop)
                    doc["trials"].append(row)
                    print(f"{fault} #{repeat}: {row}", flush=True)
        stack.close()
    except (control.LabError, stacks.BenchError) as exc:
        print(f"bench.failover.etcdfaults: {exc}", file=sys.stderr)
        return 1
    finally:
        control.down(RUN_DIR, keep_logs=True)
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "etcdfaults.json").write_text(json.dumps(doc, indent=1) + "\n")
    (args.results / "etcdfaults.md").write_text(render(doc))
    print(render(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
