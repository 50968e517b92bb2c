"""Shared pieces of the end-to-end lab tests: a lab per test module, settling, fault runs.

Every test lab gets its own prefix (`hl` + random hex) and run directory, so
it never collides with a lab a user has running (`hapy-`, /run/haproxy-py/lab)
nor with another test run. Measured gaps are appended to
tests/artifacts/lab-gaps.jsonl for the report.
"""

from __future__ import annotations

import json
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from haproxy_py.cluster.records import ClusterView
from haproxy_py.cluster.store import StoreError
from haproxy_py.lab import control, netns
from haproxy_py.lab.arpwatch import ArpWatch, Claim
from haproxy_py.lab.client import NetnsLoop, Outage, Probe, outage
from haproxy_py.lab.etcdstatus import etcd_status
from haproxy_py.lab.layout import PROXY_PORT
from haproxy_py.lab.settle import settled, unhealthy, watches_up
from haproxy_py.lab.watch import TwoOwnersWatcher, Watch
from tests.support.wait import eventually

ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"
GAPS = ARTIFACTS / "lab-gaps.jsonl"


@contextmanager
def lab_session(
    tmp: Path, mode: str, name: str, nodes: int = 2, profile: str = "default"
) -> Iterator[control.Lab]:
    """A lab under `tmp` with a fresh prefix; removed afterwards, and proven removed."""
    prefix = "hl" + secrets.token_hex(2) + "-"
    run_dir = tmp / "lab"
    lab = control.Lab.up(
        run_dir=run_dir, prefix=prefix, nodes=nodes, mode=mode, profile=profile, say=lambda _: None
    )
    try:
        yield lab
    finally:
        logs = ARTIFACTS / f"lab-logs-{name}-{mode}"
        shutil.rmtree(logs, ignore_errors=True)
        shutil.copytree(lab.paths.logs, logs, dirs_exist_ok=True)
        control.down(run_dir)
        assert netns.leftovers(prefix) == []
        assert not run_dir.exists()


NOISE = ("etcd endpoint switched", "etcd call failed", "peer call refused")


def agent_story(lab: control.Lab, lines: int = 30) -> str:
    """The agents' own account (their last log events, noise left out): what a failed
    assertion shows, since CI keeps no lab logs."""
    parts = []
    for log in sorted(lab.paths.logs.glob("*-agent.log")):
        events = [
            line.strip()[:300]
            for line in log.read_text(errors="replace").splitlines()
            if not any(noise in line for noise in NOISE)
        ]
        parts.append(f"--- {log.name}\n" + "\n".join(events[-lines:]))
    return "\n".join(parts)


def view(lab: control.Lab) -> ClusterView | None:
    try:
        return lab.view()
    except StoreError:
        return None


def settle(lab: control.Lab) -> ClusterView:
    """Wait until the lab has settled; the cluster as etcd had it then."""
    found: ClusterView | None = None

    def check() -> bool:
        nonlocal found
        found = view(lab) if settled(lab) else None
        return found is not None

    eventually(
        check,
        60,
        "the lab to settle (nodes healthy, VIPs answering, watches up)",
        detail=lambda: unhealthy(lab) or ("" if watches_up(lab) else "a watch is still down"),
    )
    assert found is not None
    return found


def hactl_json(lab: control.Lab, *args: str) -> Any:
    done = lab.hactl(*args, "-o", "json")
    assert done.returncode == 0, done.stderr
    try:
        return json.loads(done.stdout)
    except json.JSONDecodeError:
        raise AssertionError(f"hactl {args} -o json printed non-JSON:\n{done.stdout}") from None


def etcd_leader(lab: control.Lab) -> str:
    """The name of the etcd member that leads now (from the members' status endpoints)."""
    status = etcd_status(lab)
    assert status.leader is not None, f"no etcd leader among {sorted(status.db_size)}"
    return status.leader


@dataclass
class FaultRun:
    """What one fault did: the client's outage, the watchers' records, and timing.

    `two_answering` (ARP seen from the client) is the no-two-owners invariant;
    `watch.violations` (addresses) counts a fenced node's silent address too.
    """

    outage: Outage
    watch: Watch
    attempts: int
    two_answering: list[tuple[Claim, Claim]]

    def check_one_owner(self) -> None:
        assert self.two_answering == [], f"two nodes answered at once: {self.two_answering[:3]}"
        for violation in self.watch.violations:
            print(f"ADDRESS on two nodes (the fenced one silent): {violation}")


class Observation:
    """A probe of one VIP from the client namespace plus the two-owners watcher, running."""

    def __init__(self, lab: control.Lab, vip: str, loop: NetnsLoop) -> None:
        self.probe = Probe(vip, PROXY_PORT, interval=0.01, timeout=1.0, limit=120)
        self.loop = loop
        self.running = loop.submit(self.probe.run())
        nodes = {n.name: n.netns for n in lab.layout.nodes}
        self.watcher = TwoOwnersWatcher(nodes, set(lab.layout.vips)).__enter__()
        client = lab.layout.client
        self.arp = ArpWatch(client.netns, lab.layout.vips, client.address).__enter__()

    def answered_by(self, since: float, other_than: str | None) -> bool:
        """Has a connection opened after `since` been answered by a node other than `other_than`?"""
        return any(
            a.start >= since and a.node and a.node != other_than for a in list(self.probe.attempts)
        )

    def finish(self, fault: float, old_node: str | None) -> FaultRun:
        self.loop.loop.call_soon_threadsafe(self.probe.stop)
        attempts = self.running.result(timeout=30)
        watch = self.watcher.stop()
        self.arp.stop()
        assert self.arp.probes > 100, "the ARP watcher did not probe"
        return FaultRun(outage(attempts, fault, old_node), watch, len(attempts), self.arp.doubles())


@contextmanager
def observed(lab: control.Lab, vip: str) -> Iterator[Observation]:
    """Probe `vip` from the client namespace, watch who answers ARP for it there, and every
    node's addresses, meanwhile."""
    with NetnsLoop(lab.layout.client.netns) as loop:
        observation = Observation(lab, vip, loop)
        try:
            yield observation
        finally:
            observation.watcher.stop()
            observation.arp.stop()


def absent(watch: Watch, vip: str) -> float:
    """Seconds `vip` was on no node at all while watched (after it was first seen)."""
    total, gone_at, seen = 0.0, None, False
    for at, changed, holders in watch.changes:
        if changed != vip:
            continue
        if holders:
            if gone_at is not None:
                total += at - gone_at
            gone_at, seen = None, True
        elif seen:
            gone_at = at
    return total


def record_gap(mode: str, fault: str, run: FaultRun, vip: str, extra: dict[str, Any]) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    row = {
        "mode": mode,
        "fault": fault,
        "client_gap_ms": None if run.outage.gap is None else round(run.outage.gap * 1000, 1),
        "new_node_after_ms": (
            None if run.outage.first_new is None else round(run.outage.first_new * 1000, 1)
        ),
        "failed_attempts": run.outage.failed,
        "attempts": run.attempts,
        "watch_sweeps": run.watch.sweeps,
        "longest_sweep_ms": round(run.watch.longest_sweep * 1000, 2),
        "vip_absent_ms": round(absent(run.watch, vip) * 1000, 1),
        **extra,
    }
    with GAPS.open("a") as out:
        out.write(json.dumps(row) + "\n")
