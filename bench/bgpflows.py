"""`python -m bench.bgpflows`: do established WebSockets survive a change of the node set?

A 4-node BGP lab; `--clients` WebSockets from the client namespace (each
sends a frame every 100 ms, `haproxy_py.lab.echoclients`), spread over the
nodes by the router's ECMP. Then node4 is killed (every process: BIRD's
session drops, the router withdraws at once) and, `--hold` s later, started
again; or, with `--fault drain`, drained by `hactl drain` (GRACEFUL_SHUTDOWN:
it serves its WebSockets until they end or the drain timeout, then 1001, then
the route goes) and undrained; in a drain each client ends its connection
itself after a random time (`--lifetime`) and connects again. Counted:
WebSockets that broke (a reset, no close frame) on the nodes that stayed,
after the removal and after the return; for a drain also the node's own
WebSockets that their client ended, that got 1001 and that broke, and new
connections that failed. Twice: with the router's plain multipath routes (hash-threshold,
RFC 2992), then with resilient next-hop groups (`haproxy_py.lab.nhmirror`).
Writes bench/results/bgp-flows.{json,md} (bgp-flows-drain.* for a drain).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from haproxy_py.cluster import bird
from haproxy_py.lab import bgplab, control, echoclients, nhmirror
from haproxy_py.lab.control import Lab
from haproxy_py.lab.layout import PROXY_PORT

RESULTS = Path(__file__).resolve().parent / "results"
PREFIX = "hbgpf-"
RUN_DIR = Path("/tmp/haproxy-py-bench-bgpflows")
VICTIM = "node4"


def broken(events: list[dict[str, Any]], start: float, end: float, gone: str) -> dict[str, int]:
    """(pure: no I/O, no clock) Node -> connections that ended in an error in [start, end),
    on nodes other than `gone`."""
    counts: dict[str, int] = {}
    for e in events:
        if e["event"] == "error" and start <= e["at"] < end and e.get("via") != gone:
            counts[e["via"]] = counts.get(e["via"], 0) + 1
    return counts


def connected(events: list[dict[str, Any]]) -> dict[int, str]:
    """Client -> the node of its latest connection."""
    return {e["client"]: e["via"] for e in events if e["event"] == "connected"}


def sessions(lab: Lab) -> dict[str, str]:
    """Node -> when the router's BGP session with it last changed state."""
    found = bird.protocols(bgplab.router_query(lab, "show protocols"))
    return {n.name: found[n.name].since for n in lab.layout.nodes if n.name in found}


def victim_outcome(events: list[dict[str, Any]], start: float, end: float) -> dict[str, int]:
    """(pure) What happened in [start, end) to the victim's WebSockets, and to new ones."""
    window = [e for e in events if start <= e["at"] < end]
    mine = [e for e in window if e.get("via") == VICTIM]
    return {
        "ended_by_client": sum(1 for e in mine if e["event"] == "ended"),
        "closed_1001": sum(1 for e in mine if e["event"] == "closed" and e.get("code") == 1001),
        "broken_on_victim": sum(1 for e in mine if e["event"] == "error"),
        "connect_failed": sum(1 for e in window if e["event"] == "connect_failed"),
    }


def victim_gone(lab: Lab) -> bool:
    return lab.layout.node(VICTIM).address not in bgplab.next_hops(lab, lab.layout.vips[0])


def victim_buckets(lab: Lab) -> int | None:
    """The victim's buckets in the router's resilient group (None: plain multipath)."""
    held = bgplab.buckets(lab, lab.layout.vips[0])
    victim = nhmirror.object_id(lab.layout.node(VICTIM).address)
    return sum(1 for nh in held.values() if nh == victim) if held else None


def remove(lab: Lab, fault: str) -> None:
    if fault == "drain":
        done = lab.hactl("drain", VICTIM, "--yes")
        if done.returncode != 0:
            raise SystemExit(f"hactl drain failed: {done.stderr.strip()}")
    else:
        lab.kill(VICTIM)


def bring_back(lab: Lab, fault: str) -> None:
    if fault == "drain":
        lab.hactl("undrain", VICTIM)
    else:
        lab.restart(VICTIM)


def trial(
    lab: Lab, clients: int, hold: float, out: Path, fault: str, lifetime: float
) -> dict[str, Any]:
    drain = fault == "drain"
    seconds = 90 + 2 * hold + (bgplab.DRAIN_TIMEOUT if drain else 0)  # ample: stopped at the end
    url = f"http://{lab.layout.vips[0]}:{PROXY_PORT}/echo"
    argv = ["ip", "netns", "exec", lab.layout.client.netns, sys.executable, "-m"]
    argv += ["haproxy_py.lab.echoclients", "--lifetime", str(lifetime)]
    argv += [url, str(seconds), str(out), "0", str(clients)]
    control.wait_for(lambda: bgplab.ready(lab), 30, "every node's path", None)
    out.unlink(missing_ok=True)  # an earlier run's events would count as connected at once
    fleet = subprocess.Popen(argv)
    kept: int | None = None
    try:
        control.wait_for(
            lambda: len(connected(echoclients.read(str(out)))) == clients, 30, "clients", None
        )
        time.sleep(2.0)
        steady = sessions(lab)
        kill_at = time.monotonic()
        remove(lab, fault)
        if drain:  # served until its WebSockets end or the drain timeout, then withdrawn
            limit = time.monotonic() + bgplab.DRAIN_TIMEOUT + 60
            while not victim_gone(lab):  # `kept`: its buckets at the last look before
                if time.monotonic() > limit:
                    raise SystemExit("node4 was not withdrawn after its drain timeout")
                kept = victim_buckets(lab)
                time.sleep(0.2)
        gone_at = time.monotonic()
        time.sleep(hold)
        back_at = time.monotonic()
        bring_back(lab, fault)
        control.wait_for(lambda: bgplab.ready(lab), 30, "node4 back", None)
        time.sleep(hold)
        end_at = time.monotonic()
        after = sessions(lab)
    finally:
        fleet.terminate()
        fleet.wait(30)
    events = echoclients.read(str(out))
    per_node: dict[str, int] = {}
    for node in connected([e for e in events if e["at"] < kill_at]).values():
        per_node[node] = per_node.get(node, 0) + 1
    removed = broken(events, kill_at, back_at, VICTIM)
    added = broken(events, back_at, end_at, "")
    return {
        "clients": clients,
        "per_node_before": per_node,
        "on_victim": per_node.get(VICTIM, 0),
        "withdrawn_after_s": round(gone_at - kill_at, 1),
        "victim_buckets_at_withdrawal": kept,
        "broken_on_survivors_after_removal": sum(removed.values()),
        "broken_after_return": sum(added.values()),
        **victim_outcome(events, kill_at, back_at),
        "detail_removal": removed,
        "detail_return": added,
        # Sessions of the other nodes that went down and up during the trial (BFD under a
        # starved CPU): flows moved for that reason too, so such a trial is not clean.
        "flapped": sorted(n for n in steady if n != VICTIM and steady[n] != after.get(n)),
    }


def markdown(doc: dict[str, Any]) -> str:
    drain = doc.get("fault", "kill") == "drain"
    lines = [
        "# BGP mode: established WebSockets when the set of nodes changes",
        "",
        f"Run {doc['when']} (load average {doc.get('load', '?')}): 4 nodes, {doc['clients']} "
        "WebSockets (a frame every 100 ms each); "
        + (
            f"each ends itself after 0-{2 * doc['lifetime']:g} s and connects again; "
            f"{VICTIM} drained by `hactl drain` (GRACEFUL_SHUTDOWN; it serves its WebSockets "
            f"until they end or its drain timeout of {doc['drain_timeout']:g} s, then 1001 at "
            f"a frame boundary, then withdrawn), undrained {doc['hold']:g} s after the "
            "withdrawal."
            if drain
            else f"{VICTIM} killed (all its processes), started again {doc['hold']:g} s later."
        ),
        "",
        "| router | on the removed node | its WebSockets ended by the client / closed 1001 "
        "/ broken | its buckets just before the withdrawal | withdrawn after | new connections "
        "failed | broken on the other nodes after the removal | broken after the node's "
        "return | other sessions that flapped |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in doc["routers"].items():
        kept = r.get("victim_buckets_at_withdrawal")
        lines.append(
            f"| {name} | {r['on_victim']} | {r.get('ended_by_client', '-')} / "
            f"{r.get('closed_1001', '-')} / {r.get('broken_on_victim', '-')} "
            f"| {'-' if kept is None else f'{kept} of {nhmirror.BUCKETS}'} "
            f"| {r.get('withdrawn_after_s', '-')} s | {r.get('connect_failed', '-')} "
            f"| {r['broken_on_survivors_after_removal']} "
            f"| {r['broken_after_return']} | {', '.join(r['flapped']) or 'none'} |"
        )
    lines += [
        "",
        "Plain: BIRD's multipath route, hash-threshold (RFC 2992): removing a next hop "
        "re-divides the hash space, so flows move between the remaining nodes too and "
        "break there. Resilient: the same BIRD routes mirrored into a resilient next-hop "
        f"group ({nhmirror.BUCKETS} buckets, idle timer {nhmirror.IDLE} s) by "
        "`haproxy_py/lab/nhmirror.py`, since BIRD 2.0 cannot program next-hop objects: only "
        f"the removed node's buckets move, and a returning node takes only buckets idle for "
        f"{nhmirror.IDLE} s. An upstream router must keep flows in place in the same way "
        "(resilient hashing, or consistent hashing with a flow table) for scale events to "
        "break no established connection.",
        "",
    ]
    if drain:
        lines += [
            "Drain: with plain multipath the router takes the tagged path out of the ECMP set "
            "(local preference 0, RFC 8326), so the drained node's flows go to other nodes "
            "and break there while it still serves them. The resilient router keeps the "
            f"tagged path in the group at weight {nhmirror.DRAINING} (others "
            f"{nhmirror.SERVING}): idle buckets (new connections) move after the idle timer, "
            "busy ones (established flows) stay on the drained node until its route goes.",
            "",
        ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.bgpflows", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--clients", type=int, default=400)
    parser.add_argument("--hold", type=float, default=5.0)
    parser.add_argument("--fault", choices=["kill", "drain"], default="kill")
    parser.add_argument(
        "--lifetime", type=float, default=None, help="mean WebSocket lifetime, s (drain: 15)"
    )
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if args.lifetime is None:
        args.lifetime = 15.0 if args.fault == "drain" else 0.0
    load = os.getloadavg()[0]
    if args.out is None:
        args.out = RESULTS / ("bgp-flows" if args.fault == "kill" else "bgp-flows-drain")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("stopped by SIGTERM"))  # runs `finally`
    control.down(RUN_DIR)
    lab = control.Lab.up(run_dir=RUN_DIR, prefix=PREFIX, nodes=4, mode="bgp", say=print)
    routers: dict[str, Any] = {}
    try:
        control.wait_for(lambda: bgplab.ready(lab), 30, "paths", None)
        routers["plain ECMP (BIRD multipath)"] = trial(
            lab, args.clients, args.hold, RUN_DIR / "plain.jsonl", args.fault, args.lifetime
        )
        print(routers, flush=True)
        lab.use_resilient_router()
        routers["resilient next-hop group"] = trial(
            lab, args.clients, args.hold, RUN_DIR / "resilient.jsonl", args.fault, args.lifetime
        )
        print(routers, flush=True)
    finally:
        control.down(RUN_DIR, keep_logs=True)  # the logs stay in RUN_DIR/logs for a reader
    doc = {
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "clients": args.clients,
        "hold": args.hold,
        "fault": args.fault,
        "lifetime": args.lifetime,
        "drain_timeout": bgplab.DRAIN_TIMEOUT,
        "load": f"{load:.1f}-{os.getloadavg()[0]:.1f}",
        "routers": routers,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(doc, indent=1) + "\n")
    args.out.with_suffix(".md").write_text(markdown(doc))
    print(markdown(doc))


if __name__ == "__main__":
    main()
