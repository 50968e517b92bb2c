"""The failsafe in the lab (3 etcd members, 2 proxy nodes, mTLS everywhere): a client probe
and both two-owner watchers (addresses on the nodes, ARP answers seen from the client) run
through every fault. Measured figures are printed and appended to tests/artifacts."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from haproxy_py.lab import control
from haproxy_py.lab.client import longest_outage
from haproxy_py.lab.layout import MODES
from tests.support.wait import eventually

from .support import (
    FaultRun,
    absent,
    agent_story,
    etcd_leader,
    hactl_json,
    lab_session,
    observed,
    record_gap,
    settle,
)

pytestmark = [pytest.mark.lab, pytest.mark.timeout(900)]

LEASE_TTL = 2.0


@pytest.fixture(scope="module", params=MODES)
def lab(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[control.Lab]:
    """Both modes: in active-active each node holds a VIP and vouches for the other's."""
    with lab_session(tmp_path_factory.mktemp("lab"), request.param, "failsafe") as built:
        yield built


def stop_etcd(lab: control.Lab) -> list[str]:
    members = [m.name for m in lab.layout.etcd]
    for name in members:
        assert lab.kill(name) == [name]
    return members


def start_etcd(lab: control.Lab, members: list[str]) -> None:
    for name in members:
        lab.restart(name)
    eventually(lab.etcd_healthy, 60, "etcd to be healthy again")


def moves_since(lab: control.Lab, seq: int) -> list[dict[str, object]]:
    return [e for e in hactl_json(lab, "history") if int(e["seq"]) > seq]


def last_seq(lab: control.Lab) -> int:
    events = hactl_json(lab, "history")
    return max((int(e["seq"]) for e in events), default=0)


def holders_during(run: FaultRun, vip: str, start: float, end: float) -> set[str]:
    """Nodes the address watcher saw holding `vip` at any time between `start` and `end`
    (monotonic; the watcher records wall-clock times)."""
    offset = time.time() - time.monotonic()
    seen: set[str] = set()
    for at, changed, nodes in run.watch.changes:
        if changed != vip or at - offset > end:
            continue
        if at - offset < start:
            seen = set(nodes)  # the state when the window opens
        else:
            seen |= set(nodes)
    return seen


# The long outage in active-active, where each holder also vouches for the other; one length
# per mode keeps the suite short (`python -m bench.failover.etcdfaults --outage N` for more).
OUTAGE_SECONDS = {"active-standby": 15, "active-active": 60}


def test_full_etcd_outage_keeps_the_vip_where_it_is(
    lab: control.Lab, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """#16 item 3: every etcd member stopped; the VIP is served throughout, by its holder;
    `hactl status` asks the nodes and shows the failsafe and since when; etcd returns: no
    move, no manual step, and the node record says the failsafe held."""
    seconds = OUTAGE_SECONDS[lab.layout.mode]
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))  # hactl's node cache, this test's own
    before = settle(lab)
    vip = lab.layout.vips[0]
    owner = before.owner(vip)
    seq = last_seq(lab)
    assert lab.hactl("status").returncode == 0  # remembers the nodes' addresses
    with observed(lab, vip) as seen:
        fault_at = time.monotonic()
        members = stop_etcd(lab)
        time.sleep(3.0)
        during = lab.hactl("status", "-o", "json")
        eventually(lambda: time.monotonic() - fault_at > seconds, seconds + 10, "the outage")
        returned_at = time.monotonic()
        start_etcd(lab, members)
        settle(lab)
        eventually(lambda: time.monotonic() - returned_at > 5, 10, "five seconds after etcd")
        run = seen.finish(fault_at, owner)
    longest = longest_outage(list(seen.probe.attempts), fault_at)
    record_gap(
        lab.layout.mode,
        f"etcd-all-{seconds}s",
        run,
        vip,
        {"longest_probe_outage_ms": round(longest * 1000, 1)},
    )
    print(
        f"etcd outage {seconds} s: {run.attempts} probes, {run.outage.failed} failed, "
        f"longest probe outage {longest * 1000:.0f} ms, VIP absent "
        f"{absent(run.watch, vip) * 1000:.0f} ms"
    )
    run.check_one_owner()
    assert during.returncode != 0, "hactl status should say etcd does not answer"
    nodes = {n["name"]: n for n in json.loads(during.stdout)["nodes"]}
    story = agent_story(lab)
    assert nodes[owner]["vips"] == [vip] and nodes[owner]["failsafe_since"], (nodes, story)
    assert nodes[owner]["etcd"] is False
    assert run.watch.violations == []
    # The VIP never left its holder (without the failsafe it goes within a second, for the
    # whole outage); a probe may still time out on a machine this loaded, so the client
    # side is bounded generously: no stretch without answers as long as a fence period.
    assert absent(run.watch, vip) == 0.0, story
    assert longest < 2.0 and run.outage.failed <= run.attempts // 100, run.outage
    after = settle(lab)
    assert after.owner(vip) == owner
    events = moves_since(lab, seq)
    assert not [e for e in events if e.get("vip") == vip and e.get("cause") != "failsafe"], events
    status = hactl_json(lab, "status")
    kept = {n["name"] for n in status["nodes"] if (n.get("failsafe") or {}).get("until")}
    holders = {n["name"] for n in status["nodes"] if n["vips"]}  # both, in active-active
    assert owner in kept and kept == holders, status["nodes"]


def test_etcd_leader_killed_opens_no_vip_gap(lab: control.Lab) -> None:
    """#16 item 6: SIGKILL of the etcd leader member; the client probe sees no outage (the
    failsafe covers the election). Asserted generously; the figure is printed."""
    before = settle(lab)
    vip = lab.layout.vips[0]
    owner = before.owner(vip)
    leader = etcd_leader(lab)
    try:
        with observed(lab, vip) as seen:
            fault_at = time.monotonic()
            assert lab.kill(leader) == [leader]
            eventually(lambda: time.monotonic() - fault_at > 6, 10, "six seconds")
            run = seen.finish(fault_at, owner)
    finally:
        lab.restart(leader)
        eventually(lab.etcd_healthy, 60, f"{leader} to rejoin")
    longest = longest_outage(list(seen.probe.attempts), fault_at)
    record_gap(
        lab.layout.mode,
        "etcd-leader-kill-failsafe",
        run,
        vip,
        {"longest_probe_outage_ms": round(longest * 1000, 1)},
    )
    print(
        f"etcd leader killed: longest probe outage {longest * 1000:.0f} ms, "
        f"{run.outage.failed} of {run.attempts} probes failed, VIP absent "
        f"{absent(run.watch, vip) * 1000:.0f} ms"
    )
    run.check_one_owner()
    assert absent(run.watch, vip) == 0.0
    assert longest <= 1.0
    assert settle(lab).owner(vip) == owner


def test_holder_cut_off_during_the_outage_fences_and_nobody_takes_over(lab: control.Lab) -> None:
    """#16 item 4: etcd down, then the holder partitioned from its peer and etcd: it fences on
    its normal deadline (it hears no peer); the other node waits for etcd, then the normal
    rules move the VIP (the holder's lease expires, it is still cut off)."""
    before = settle(lab)
    vip = lab.layout.vips[0]
    owner = before.owner(vip)
    assert owner is not None
    other = next(n.name for n in lab.layout.nodes if n.name != owner)
    try:
        with observed(lab, vip) as seen:
            fault_at = time.monotonic()
            members = stop_etcd(lab)
            time.sleep(3.0)  # the failsafe holds the VIP
            lab.partition(owner)
            cut_at = time.monotonic()  # once every route is in place
            time.sleep(6.0)
            returned_at = time.monotonic()
            start_etcd(lab, members)
            eventually(lambda: seen.answered_by(returned_at, owner), 30, f"{other} to serve")
            moved_at = time.monotonic()
            run = seen.finish(fault_at, owner)
    finally:
        lab.heal(owner)
    held_until = _lost_at(run, vip, owner, cut_at)
    print(
        f"holder cut off: VIP gone from {owner} {(held_until - cut_at) * 1000:.0f} ms after "
        f"the cut; moved to {other} {(moved_at - returned_at):.1f} s after etcd returned"
    )
    run.check_one_owner()
    assert run.watch.violations == []
    assert held_until - cut_at <= LEASE_TTL, "the cut-off holder kept the VIP past its deadline"
    assert other not in holders_during(run, vip, fault_at, returned_at)
    settle(lab)


def _lost_at(run: FaultRun, vip: str, node: str, since: float) -> float:
    """When (monotonic) `node` stopped holding `vip`, first after `since`."""
    offset = time.time() - time.monotonic()
    for at, changed, nodes in run.watch.changes:
        if changed == vip and at - offset >= since and node not in nodes:
            return at - offset
    raise AssertionError(f"{vip} never left {node} after the fault")


def test_holder_killed_during_the_outage_is_replaced_only_after_etcd(lab: control.Lab) -> None:
    """#16 item 5: the failsafe keeps a working holder and never elects a new one: with the
    holder killed during the outage the VIP is lost until etcd returns, then it fails over.
    Last in the module: the killed daemons' logs end with a watch that never came back,
    which `settle` would wait for."""
    before = settle(lab)
    vip = lab.layout.vips[0]
    owner = before.owner(vip)
    assert owner is not None
    other = next(n.name for n in lab.layout.nodes if n.name != owner)
    try:
        with observed(lab, vip) as seen:
            fault_at = time.monotonic()
            members = stop_etcd(lab)
            time.sleep(3.0)
            killed_at = time.monotonic()
            assert lab.kill(owner)
            time.sleep(6.0)
            returned_at = time.monotonic()
            start_etcd(lab, members)
            eventually(lambda: seen.answered_by(returned_at, owner), 30, f"{other} to serve")
            served_at = time.monotonic()
            run = seen.finish(fault_at, owner)
    finally:
        lab.restart(owner)
    print(
        f"holder killed during the outage: {other} served {served_at - returned_at:.1f} s "
        "after etcd returned"
    )
    run.check_one_owner()
    assert run.watch.violations == []
    assert other not in holders_during(run, vip, killed_at, returned_at)
