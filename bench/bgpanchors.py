"""`python -m bench.bgpanchors --anchor exabgp|metallb`: the anchors under bench.bgp's faults.

The BGP lab's topology (`haproxy_py.lab.bgplab`: 4 nodes on a bridge, the
BIRD router with `merge paths` and `fib_multipath_hash_policy = 1`, the client
behind it), with the router's BFD off and its hold time left at BIRD's default
(240 s, so the node's proposal is the one negotiated), and on each node, in
place of haproxy-py, its agent and BIRD (`bench.anchorconf` has the configs):

- `exabgp`: HAProxy and ExaBGP 4.2 with its `healthcheck` process, defaults
  (check every 5 s, 1 s while changing, fall 3, rise 3; a failing node is
  announced with a worse MED, not withdrawn; hold time 180 s);
- `metallb`: HAProxy and FRR's bgpd with MetalLB's session defaults
  (hold time 90 s, keepalive 30 s, no BFD), the VIP announced while
  `bench.anchorready` finds the node ready.

Faults, each on one node, nodes in turn: the proxy SIGKILLed, every process of
the node SIGKILLed, the node's link cut, and the anchor's planned drain
(ExaBGP: its `--disable` file; MetalLB: the pod not ready while its proxy
serves). Per trial: from the fault until the router's kernel route lacks the
node, and from the fault to the last failed new connection (a probe from the
client every 5 ms, every 50 ms for faults that wait for the hold time); a
drain also counts established WebSockets that broke. Writes the anchor's
figures into bench/results/bgp-anchors.json and renders bgp-anchors.md with
ours (bench/results/bgp.json) beside them; `--render` only renders.
Everything is removed at the end, also on failure; loops are bounded.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import functools
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import anchorconf, bgpflows
from bench.bgp import failing, link, signal_label, summary
from haproxy_py.lab import bgplab, control, echoclients, ecmp, netns
from haproxy_py.lab.client import NetnsLoop, Probe
from haproxy_py.lab.layout import APP_PORT, PROXY_PORT

RESULTS = Path(__file__).resolve().parent / "results"
TREE = Path(__file__).resolve().parent.parent
DRAIN_CLIENTS = 40
LOCK = Path("/tmp/haproxy-py-bench-anchors.lock")  # both anchors write one results file
PACKAGE_SERVICES = ("frr", "exabgp")  # started by their packages on a systemd host


@dataclass(frozen=True)
class Anchor:
    name: str
    title: str
    prefix: str  # lab namespace prefix
    processes: tuple[str, ...]  # in start order
    hold: int  # the BGP hold time negotiated with the router, s
    restart: int  # how long the router keeps a lost session's routes (graceful restart), s
    read: str  # what we read for its defaults, quoted in the report


ANCHORS = {
    "exabgp": Anchor(
        "exabgp",
        "ExaBGP 4.2 + healthcheck (defaults)",
        "hax-",
        ("proxy", "speaker"),
        anchorconf.HOLD_EXABGP,
        0,
        "Debian exabgp 4.2.21: `/usr/share/doc/exabgp/examples/example-healthcheck.conf` "
        "(healthcheck as an ExaBGP process, `curl --fail --max-time 2` of the local web "
        "server, no `hold-time`); `exabgp/application/healthcheck.py`: `--interval` 5 s, "
        "`--fast-interval` 1 s, `--rise` 3, `--fall` 3, `--timeout` 5 s, a down service "
        "announced with `--down-metric` 1000 (up: 100, disabled: 500) unless "
        "`--withdraw-on-down`, `--disable FILE` puts it in maintenance; "
        "`exabgp/configuration/neighbor/__init__.py`: `hold-time` default 180 s. No BFD.",
    ),
    "metallb": Anchor(
        "metallb",
        "MetalLB BGP defaults on FRR",
        "ham-",
        ("speaker", "proxy", "ready"),
        anchorconf.HOLD_METALLB,
        anchorconf.RESTART_FRR,
        "metallb/metallb (main, 2026-07): `internal/config/config.go` defaulted `holdTime` "
        "to 90 s and `keepaliveTime` to hold/3 until commit bf4c8d5f7 (2024-09, "
        '"Controller: Align with pointered hold/keepalive timers"); since then the FRR '
        "template (`internal/bgp/frr/templates/neighborsession.tmpl`) writes `timers` only "
        "when set, and the native speaker still sets 90 s (`internal/bgp/native/native.go`). "
        "BFD only with a `bfdProfile` (none by default). `internal/bgp/frr/templates/frr.tmpl` "
        "has `bgp graceful-restart preserve-fw-state` for every router (since 2570fec1e, "
        "2024-05), so FRR offers graceful restart (restart time 120 s, FRR's default) and a "
        "router that is a graceful-restart helper (BIRD's default, most routers') keeps a "
        "node's routes, stale, for up to 120 s after its session drops without a "
        "NOTIFICATION. `website/content/usage/_index.md`: "
        "with `externalTrafficPolicy: Local` a node attracts traffic only while it runs a "
        "ready pod of the service (modelled by `bench.anchorready`, see there).",
    ),
}


class AnchorLab(control.Lab):
    """The BGP lab with an anchor's processes on the nodes instead of ours; no etcd."""

    anchor: Anchor = ANCHORS["exabgp"]

    def _build(self, say: control.Say) -> None:
        router = bgplab.router_config(self.layout, hold=None, bfd=False)
        bgplab.build(self, say, router_conf=router)
        settle = self.anchor.hold + 60.0
        control.wait_for(
            lambda: bgplab.ready(self), settle, "BGP did not converge", self.paths.logs
        )

    def start_cluster_store(self, say: control.Say) -> None:
        say(f"no etcd: {self.anchor.title} does not use it")

    def start_node(self, name: str, processes: tuple[str, ...] | None = None) -> None:
        node = self.layout.node(name)
        self.write_configs(name)
        netns.ip("addr", "replace", f"{self.layout.vips[0]}/32", "dev", "lo", netns=node.netns)
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **exabgp_env()}
        for process in processes or self.anchor.processes:
            label = f"{name}/{process}"
            if label not in self.running(name):
                argv = self.command(name, process)
                self.plumbing.spawn(
                    node.netns, argv, label=label, log=self.paths.log(label), env=env, cwd=TREE
                )

    # ---- the node's files and commands ----

    def file(self, node: str, what: str) -> Path:
        return self.paths.etc / f"{node}-{what}"

    def drain_file(self, node: str) -> Path:
        return self.file(node, "drain")

    def write_configs(self, name: str) -> None:
        node = self.layout.node(name)
        apps = [f"{a.address}:{APP_PORT}" for a in self.layout.apps]
        self.file(name, "haproxy.cfg").write_text(anchorconf.haproxy_config(name, apps))
        router = bgplab.router_address(self.layout)
        asns = {"local_asn": bgplab.NODE_ASN, "peer_asn": bgplab.ROUTER_ASN}
        if self.anchor.name == "exabgp":
            text = anchorconf.exabgp_config(
                node=node.address,
                router=router,
                vip=self.layout.vips[0],
                disable=str(self.drain_file(name)),
                **asns,
            )
            self.file(name, "exabgp.conf").write_text(text)
            return
        self.file(name, "vty").mkdir(exist_ok=True)
        text = anchorconf.frr_config(hostname=name, node=node.address, router=router, **asns)
        self.file(name, "bgpd.conf").write_text(text)

    def command(self, node: str, process: str) -> list[str]:
        if process == "proxy":
            return [
                shutil.which("haproxy") or "haproxy",
                "-db",
                "-f",
                str(self.file(node, "haproxy.cfg")),
            ]
        if self.anchor.name == "exabgp":
            return [shutil.which("exabgp") or "exabgp", str(self.file(node, "exabgp.conf"))]
        vty = str(self.file(node, "vty"))
        if process == "ready":
            argv = [sys.executable, "-m", "bench.anchorready", "--vty", vty]
            argv += ["--asn", str(bgplab.NODE_ASN), "--vip", self.layout.vips[0]]
            return [*argv, "--drain", str(self.drain_file(node))]
        return [
            "/usr/lib/frr/bgpd",
            *("-f", str(self.file(node, "bgpd.conf"))),
            *("-i", str(self.file(node, "bgpd.pid"))),
            *("--vty_socket", vty),
            "-Z",  # no zebra: the node installs no route it learns (the router sends none)
            "-S",  # as root, no change of user (its vty group would need root in it)
            *("-P", "0"),  # no TCP vty
        ]


def exabgp_env() -> dict[str, str]:
    """ExaBGP as root in the foreground, no CLI pipes (none exist in the lab)."""
    return {
        "exabgp_daemon_user": "root",
        "exabgp_daemon_daemonize": "false",
        "exabgp_api_cli": "false",
    }


def stop_package_services(say: control.Say) -> None:
    """The packages' own daemons would speak BGP and change routes on the host: the bench
    runs its own in the lab, so any of theirs that runs is stopped and disabled."""
    if not Path("/run/systemd/system").is_dir():
        return  # no systemd: nothing was started on install
    for unit in PACKAGE_SERVICES:
        state = subprocess.run(["systemctl", "is-active", unit], capture_output=True, text=True)
        enabled = subprocess.run(["systemctl", "is-enabled", unit], capture_output=True, text=True)
        if state.stdout.strip() == "active" or enabled.stdout.strip() == "enabled":
            subprocess.run(
                ["systemctl", "disable", "--now", unit], capture_output=True, check=False
            )
            say(f"stopped and disabled {unit}.service (the bench runs its own in the lab)")


def missing_requirements(anchor: Anchor) -> str | None:
    needs = {"haproxy": "haproxy", "curl": "curl"}
    needs |= {"exabgp": "exabgp"} if anchor.name == "exabgp" else {"vtysh": "frr"}
    for program, package in needs.items():
        if shutil.which(program) is None:
            return f"{anchor.title} needs {program}: apt-get install {package} (make bench-anchors)"
    return bgplab.missing_requirements()


# ---- faults ----

Step = Callable[[str], object]


@dataclass(frozen=True)
class Fault:
    name: str
    cause: Step
    repair: Step
    slow: tuple[str, ...]  # anchors whose figure is a BGP timer: fewer trials, a slower probe


def kill_node(lab: AnchorLab, node: str) -> None:
    """SIGKILL every process in the node's namespace at once (ExaBGP puts its healthcheck
    in a process group of its own, so the lab's per-group kill would miss it)."""
    ns = lab.layout.node(node).netns
    done = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True, check=True)
    pids = [int(p) for p in done.stdout.split()]
    for sig in (signal.SIGSTOP, signal.SIGKILL):  # none keeps running while the others die
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)


def faults(lab: AnchorLab) -> list[Fault]:
    def restart(node: str) -> None:
        lab.restart(node)

    return [
        Fault(
            "proxy SIGKILL",
            lambda n: signal_label(lab, f"{n}/proxy", signal.SIGKILL),
            restart,
            slow=(),
        ),
        Fault(
            "node SIGKILL (every process)",
            functools.partial(kill_node, lab),
            restart,
            # bgpd offers graceful restart (MetalLB's template): a session lost without a
            # NOTIFICATION leaves its routes at the router, stale, for the 120 s restart time
            slow=("metallb",),
        ),
        Fault(
            "planned drain",
            lambda n: lab.drain_file(n).touch(),
            lambda n: lab.drain_file(n).unlink(missing_ok=True),
            slow=(),
        ),
        Fault(
            "link cut",
            lambda n: link(lab, n, "down"),
            lambda n: link(lab, n, "up"),
            slow=tuple(ANCHORS),
        ),
    ]


# ---- trials ----


def drain_outcome(events: list[dict[str, Any]], node: str, fault: float) -> dict[str, int]:
    """(pure: no I/O, no clock) WebSockets on `node` when it was drained, and those of it and
    of the other nodes that broke (a reset, no close frame) after the drain began."""
    before = {
        e["client"]: e["via"] for e in events if e["event"] == "connected" and e["at"] < fault
    }
    broke = [e for e in events if e["event"] == "error" and e["at"] >= fault]
    return {
        "on_node": sum(1 for via in before.values() if via == node),
        "broken_on_node": sum(1 for e in broke if e.get("via") == node),
        "broken_elsewhere": sum(1 for e in broke if e.get("via") != node),
    }


def websockets(lab: AnchorLab, out: Path, seconds: float) -> subprocess.Popen[bytes]:
    """`DRAIN_CLIENTS` WebSockets from the client namespace, a frame every 100 ms each."""
    url = f"http://{lab.layout.vips[0]}:{PROXY_PORT}/echo"
    argv = ["ip", "netns", "exec", lab.layout.client.netns, sys.executable, "-m"]
    argv += ["haproxy_py.lab.echoclients", url, str(seconds), str(out), "0", str(DRAIN_CLIENTS)]
    out.unlink(missing_ok=True)
    return subprocess.Popen(argv, cwd=TREE)


def trial(lab: AnchorLab, fault: Fault, node: str, loop: NetnsLoop) -> dict[str, Any]:
    slow = lab.anchor.name in fault.slow
    limit = lab.anchor.hold + lab.anchor.restart + 60.0 if slow else 30.0
    fleet = None
    events = lab.paths.root / "drain-websockets.jsonl"

    def connected() -> bool:
        return len(bgpflows.connected(echoclients.read(str(events)))) == DRAIN_CLIENTS

    try:
        if fault.name == "planned drain":
            fleet = websockets(lab, events, limit + 60)
            control.wait_for(connected, 30, "the WebSockets", None)
        time.sleep(0.5)
        probe = Probe(
            lab.layout.vips[0], PROXY_PORT, interval=0.05 if slow else 0.005, limit=limit + 10
        )
        running = loop.submit(probe.run())
        time.sleep(0.3)
        at, took = time.monotonic(), None
        try:
            cause = functools.partial(fault.cause, node)
            every = 0.05 if slow else 0.001  # a look costs a process: not 3 min of them
            at, took = ecmp.withdrawal(lab, node, cause, limit=limit, every=every)
        except AssertionError as exc:  # still a next hop: the figure is "not within the limit"
            print(f"  {exc}", flush=True)
        time.sleep(1.5)  # a SYN lost on a cut link fails after the probe's 1 s timeout
        loop.loop.call_soon_threadsafe(probe.stop)
        result: dict[str, Any] = {"withdrawal": took, "failing": failing(running.result(30), at)}
    finally:
        if fleet is not None:
            fleet.terminate()
            fleet.wait(30)
    if fleet is not None:
        result |= drain_outcome(echoclients.read(str(events)), node, at)
    return result


def settle(lab: AnchorLab) -> None:
    """Every node's path at the router, and again 3 s later: a restarted node's stale route
    (graceful restart) counts until its new session flushes it, before it announces."""
    for _ in range(2):
        control.wait_for(
            lambda: bgplab.ready(lab),
            lab.anchor.hold + lab.anchor.restart + 60.0,
            "every node's path back",
            None,
        )
        time.sleep(3.0)


def run(
    lab: AnchorLab,
    repeats: int,
    slow_repeats: int,
    only: list[str],
    save: Callable[[dict[str, Any]], None],
) -> None:
    """Every fault in turn, nodes in turn."""
    nodes = [n.name for n in lab.layout.nodes]
    found: dict[str, list[dict[str, Any]]] = {}
    meta: dict[str, dict[str, Any]] = {}
    with NetnsLoop(lab.layout.client.netns) as loop:
        for fault in faults(lab):
            if only and fault.name not in only:
                continue
            trials = found.setdefault(fault.name, [])
            meta[fault.name] = {
                "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                "load": os.getloadavg()[0],
            }
            for i in range(slow_repeats if lab.anchor.name in fault.slow else repeats):
                node = nodes[i % len(nodes)]
                settle(lab)
                trials.append(trial(lab, fault, node, loop))
                fault.repair(node)
                t = trials[-1]
                took = "never" if t["withdrawal"] is None else f"{t['withdrawal'] * 1000:.0f} ms"
                print(
                    f"  {fault.name} on {node}: withdrawn {took}, "
                    f"clients failed {t['failing'] * 1000:.0f} ms"
                    + (
                        f", websockets {t['broken_on_node']}/{t['on_node']} broken on the node, "
                        f"{t['broken_elsewhere']} elsewhere"
                        if "on_node" in t
                        else ""
                    ),
                    flush=True,
                )
                save(figures(found, meta))  # after each trial: a cut-short run keeps its trials


def figures(
    found: dict[str, list[dict[str, Any]]], meta: dict[str, dict[str, Any]]
) -> dict[str, Any]:
    """(pure: no I/O, no clock) Per fault: p50/p95/max of both figures, the trials."""
    faults_found: dict[str, Any] = {}
    for name, trials in found.items():
        withdrawn = [t["withdrawal"] for t in trials if t["withdrawal"] is not None]
        entry: dict[str, Any] = {
            **meta.get(name, {}),
            "withdrawal": summary(withdrawn),
            "never_withdrawn": len(trials) - len(withdrawn),
            "clients_failing": summary([t["failing"] for t in trials]),
            "raw": trials,
        }
        if trials and "on_node" in trials[0]:
            entry["websockets"] = {
                k: sum(t[k] for t in trials)
                for k in ("on_node", "broken_on_node", "broken_elsewhere")
            }
        faults_found[name] = entry
    return faults_found


# ---- results ----


def store(path: Path, anchor: Anchor, doc: dict[str, Any]) -> None:
    """Merge one anchor's figures into the results file (two anchors may run at once)."""
    with open(LOCK, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        found = json.loads(path.read_text()) if path.exists() else {}
        kept = found.setdefault("anchors", {}).get(anchor.name, {}).get("faults", {})
        found["anchors"][anchor.name] = {**doc, "faults": {**kept, **doc["faults"]}}
        path.write_text(json.dumps(found, indent=1) + "\n")


NOTES = [
    "- Proxy SIGKILL, ExaBGP: the healthcheck checks every 5 s and needs 3 failures 1 s apart "
    "(then MED 1000, which takes the path out of the router's ECMP set): 2-7 s after the "
    "death. The trials start a fixed time after the node came back, so they cluster at "
    "5-6 s; the spread understates that range.",
    "- Proxy SIGKILL, MetalLB: the model's 1 s check plus a `vtysh` call, so 0.1-1.1 s; in a "
    "real cluster the kubelet, the API server, the EndpointSlice and the speaker's FRR reload "
    "come on top.",
    "- Node SIGKILL kills the processes, not the machine: the node's kernel closes ExaBGP's "
    "TCP session at once (no graceful restart offered), so the router drops the path in "
    "milliseconds; FRR, as MetalLB configures it, offers graceful restart, so the router "
    "keeps the dead node's path, stale, for the 120 s restart time. A machine that loses "
    "power sends nothing: then both wait for the hold time, as in the link cut.",
    "- Link cut: without BFD the router notices only when the hold time (180 s ExaBGP, 90 s "
    "MetalLB) runs out, counted from the last message it got from the node; for MetalLB's "
    "FRR the router, a graceful-restart helper, then keeps the path, stale, for the 120 s "
    "restart time as well.",
    "- Planned drain: both anchors take the node's path away at once (ExaBGP: MED 500; "
    "MetalLB: the route withdrawn) while its proxy still serves, so with hash-threshold "
    "ECMP every WebSocket on the node moves to another node and breaks there, and some on "
    "the other nodes move too; new connections do not fail (the one failure in an ExaBGP "
    "trial, 1.9 s after the drain, is in the table).",
]

OURS = {  # our bench.bgp fault -> the anchors' name for the same fault
    "proxy SIGKILL": "proxy SIGKILL",
    "node SIGKILL (every process)": "node SIGKILL (every process)",
    "link cut (BFD)": "link cut",
}


def ms(s: dict[str, Any]) -> str:
    if not s.get("n"):
        return "- | - | - | -"
    return f"{s['n']} | {s['p50_ms']:.0f} | {s['p95_ms']:.0f} | {s['max_ms']:.0f}"


def our_drain(found: dict[str, Any]) -> str:
    """One sentence per router from bench.bgpflows' drain figures."""
    parts = [
        f"{router}: {r['broken_on_victim']} of the drained node's {r['on_victim']} WebSockets "
        f"and {r['broken_on_survivors_after_removal']} of the other nodes' broke, "
        f"{r['closed_1001']} closed with 1001, {r['connect_failed']} new connections failed, "
        f"withdrawn {r['withdrawn_after_s']} s after the drain"
        for router, r in found.get("routers", {}).items()
    ]
    if not parts:
        return ""
    return (
        f"haproxy-py (`hactl drain`, `bench/results/bgp-flows-drain.md`, one trial, "
        f"{found['clients']} WebSockets): " + "; ".join(parts) + "."
    )


def markdown(doc: dict[str, Any], ours: dict[str, Any], drain: dict[str, Any]) -> str:
    anchors = doc.get("anchors", {})
    rows: dict[str, list[str]] = {}
    for our_name, name in OURS.items():
        if our_name in ours.get("withdrawal", {}):
            rows.setdefault(name, []).append(
                f"| haproxy-py (BIRD, BFD 100 ms x 3, hold 9 s) | "
                f"{ms(ours['withdrawal'][our_name])} | {ms(ours['clients_failing'][our_name])} |"
            )
    for key, found in anchors.items():
        anchor = ANCHORS[key]
        for name, entry in found["faults"].items():
            rows.setdefault(name, []).append(
                f"| {anchor.title} (hold {anchor.hold} s) | {ms(entry['withdrawal'])} | "
                f"{ms(entry['clients_failing'])} |"
            )
    lines = [
        "# BGP mode beside its anchors: the same faults, the same lab",
        "",
        "The BGP lab (4 nodes, the BIRD router with `merge paths` and "
        "`fib_multipath_hash_policy = 1`, the client behind it) with each set-up on the "
        "nodes. Withdrawal: from the fault until the router's kernel route lacks the node. "
        "Failing: from the fault to the start of the last new connection that failed (a probe "
        "from the client, 1 s timeout, about one in four to the faulty node). Milliseconds.",
        "",
    ]
    for name in ["proxy SIGKILL", "node SIGKILL (every process)", "link cut", "planned drain"]:
        if name not in rows:
            continue
        lines += [
            f"## {name}",
            "",
            "| set-up | n | withdrawal p50 | p95 | max | n | failing p50 | p95 | max |",
            "|---|---|---|---|---|---|---|---|---|",
            *rows[name],
            "",
        ]
        if name == "planned drain" and our_drain(drain):
            lines.append(our_drain(drain))
        for key, found in anchors.items():
            never = found["faults"].get(name, {}).get("never_withdrawn")
            if never:
                lines.append(
                    f"{ANCHORS[key].title}: in {never} trials the router still had the node's path "
                    "when the trial gave up (not counted in the withdrawal columns)."
                )
            ws = found["faults"].get(name, {}).get("websockets")
            if ws:
                lines.append(
                    f"{ANCHORS[key].title}: of {ws['on_node']} WebSockets on the drained node "
                    f"(over all trials, {DRAIN_CLIENTS} clients per trial), {ws['broken_on_node']} "
                    f"broke; {ws['broken_elsewhere']} broke on the other nodes."
                )
        lines.append("")
    lines += ["## Why", "", *NOTES, "", "## What ran, and what we read", ""]
    if ours:
        lines += [
            f"**haproxy-py**: `bench/results/bgp.md`, run {ours['when']} on {ours['host']} "
            f"(load average {ours['load']:.1f} at the start), BIRD {ours['bird']} on the nodes.",
            "",
        ]
    for key, found in anchors.items():
        anchor = ANCHORS[key]
        lines += [
            f"**{anchor.title}**: run on {found['host']} ({found['cpus']} CPUs); {found['ran']} "
            + "; ".join(
                f"{name}: {entry['when']}, load average {entry['load']:.1f} at the start"
                for name, entry in found["faults"].items()
            )
            + ".",
            "",
            f"Read: {anchor.read}",
            "",
        ]
    return "\n".join(lines)


def ran(anchor: Anchor) -> str:
    versions = {
        "haproxy": ["haproxy", "-v"],
        "exabgp": ["exabgp", "--version"],
        "frr": ["/usr/lib/frr/bgpd", "--version"],
    }
    wanted = ["haproxy", "exabgp" if anchor.name == "exabgp" else "frr"]
    found = []
    for name in wanted:
        done = subprocess.run(versions[name], capture_output=True, text=True, check=False)
        found.append((done.stdout or done.stderr).strip().splitlines()[0])
    return "; ".join(found) + "."


def render(path: Path) -> None:
    doc = json.loads(path.read_text()) if path.exists() else {}
    ours_path = RESULTS / "bgp.json"
    ours = json.loads(ours_path.read_text()) if ours_path.exists() else {}
    drain_path = RESULTS / "bgp-flows-drain.json"
    drain = json.loads(drain_path.read_text()) if drain_path.exists() else {}
    path.with_suffix(".md").write_text(markdown(doc, ours, drain))


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.bgpanchors", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--anchor", choices=sorted(ANCHORS), help="the set-up to run")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument(
        "--slow-repeats", type=int, default=5, help="trials of the hold-time faults"
    )
    parser.add_argument("--faults", default="", help="comma-separated fault names (default: all)")
    parser.add_argument("--out", type=Path, default=RESULTS / "bgp-anchors.json")
    parser.add_argument("--render", action="store_true", help="only render the .md from the .json")
    args = parser.parse_args()
    if args.render or args.anchor is None:
        render(args.out)
        return
    anchor = ANCHORS[args.anchor]
    problem = missing_requirements(anchor)
    if problem:
        raise SystemExit(problem)
    stop_package_services(print)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("stopped by SIGTERM"))  # runs `finally`
    run_dir = Path(f"/tmp/haproxy-py-bench-anchors-{anchor.name}")
    control.down(run_dir)  # what a killed earlier run left
    doc: dict[str, Any] = {"host": platform.node(), "cpus": os.cpu_count(), "ran": ran(anchor)}
    cls = type(f"{args.anchor.title()}Lab", (AnchorLab,), {"anchor": anchor})
    lab = cls.up(run_dir=run_dir, prefix=anchor.prefix, nodes=4, mode="bgp", say=print)

    def save(found: dict[str, Any]) -> None:
        doc["faults"] = found
        store(args.out, anchor, doc)
        render(args.out)

    try:
        only = [f for f in args.faults.split(",") if f]
        run(lab, args.repeats, args.slow_repeats, only, save)
    finally:
        control.down(run_dir, keep_logs=True)
    print(args.out.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
