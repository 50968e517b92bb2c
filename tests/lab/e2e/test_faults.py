"""Every fault in both modes: the VIP ends on a healthy node, hactl tells the truth and records
it, a client in the client namespace gets answers again, and no VIP is ever on two nodes."""

from __future__ import annotations

import time
from collections.abc import Iterator
from functools import partial

import pytest

from haproxy_py.cluster.records import ClusterView
from haproxy_py.lab import control
from haproxy_py.lab.layout import MODES
from tests.support.wait import eventually

from .support import (
    absent,
    etcd_leader,
    hactl_json,
    lab_session,
    observed,
    record_gap,
    settle,
    view,
)

pytestmark = [pytest.mark.lab, pytest.mark.timeout(600)]

LEASE_TTL = 2.0  # the lab's node lease (the default)


@pytest.fixture(scope="module", params=MODES)
def lab(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[control.Lab]:
    with lab_session(tmp_path_factory.mktemp("lab"), request.param, "faults") as built:
        yield built


# fault -> the cause `hactl history` must show. "+leader": the node that fails also runs the
# leading controller (a standby controller must take over before the VIP can move).
MOVING = {
    "planned": "manual",
    "kill": "node lost",
    "kill+leader": "node lost",
    "partition": "node lost",
    "partition+leader": "node lost",
    "stop-proxy": "proxy unhealthy",
}


def _inject(lab: control.Lab, fault: str, node: str, vip: str) -> None:
    kind = fault.split("+")[0]
    if kind == "planned":
        done = lab.hactl("failover", "--vip", vip, "-y")
        assert done.returncode == 0, done.stdout + done.stderr
    elif kind == "kill":
        assert lab.kill(node)
    elif kind == "partition":
        lab.partition(node)
    elif kind == "stop-proxy":
        assert lab.kill(node, "proxy") == [f"{node}/proxy"]


def _arrange(lab: control.Lab, with_leader: bool | None) -> tuple[str, ClusterView]:
    """A VIP whose owner runs the leading controller (or does not), moving one if needed."""
    current = settle(lab)
    for _ in range(3):
        assert current.leader is not None
        leader = current.leader.id
        for vip in lab.layout.vips:
            if with_leader is None or (current.owner(vip) == leader) == with_leader:
                return vip, current
        vip = lab.layout.vips[0]
        owner = current.owner(vip)
        assert owner is not None
        if with_leader:
            done = lab.hactl("failover", "--vip", vip, "--to", leader, "-y")
            assert done.returncode == 0, done.stdout + done.stderr
        else:  # hand the leadership to another node's controller
            lab.kill(owner, "controller")
            eventually(partial(_led_by_other_than, lab, leader), 30, "another controller to lead")
            lab.restart(owner)
        current = settle(lab)
    pytest.fail(f"could not arrange a VIP {'with' if with_leader else 'without'} the leader")


def _led_by_other_than(lab: control.Lab, leader: str) -> bool:
    now = view(lab)
    return now is not None and now.leader is not None and now.leader.id != leader


@pytest.mark.parametrize("fault", list(MOVING))
def test_vip_moves_to_a_healthy_node(lab: control.Lab, fault: str) -> None:
    with_leader = None if fault in ("planned", "stop-proxy") else fault.endswith("+leader")
    vip, before = _arrange(lab, with_leader)
    old = before.owner(vip)
    assert old is not None
    try:
        leader = before.leader.id if before.leader else None
        _move_and_check(lab, fault, vip, old, before.epoch, leader)
    finally:
        lab.restart(old)


def _move_and_check(
    lab: control.Lab, fault: str, vip: str, old: str, last_epoch: int, leader: str | None
) -> None:
    with observed(lab, vip) as seen:
        fault_at = time.monotonic()
        _inject(lab, fault, old, vip)

        def moved() -> bool:
            now = view(lab)
            if now is None or vip not in now.vips:
                return False
            owner = now.vips[vip]
            node = now.nodes.get(owner.node)
            return owner.node != old and owner.state == "assigned" and bool(node and node.healthy)

        eventually(moved, 30, f"{vip} to move off {old} onto a healthy node")
        eventually(lambda: seen.answered_by(fault_at, old), 30, "answers from the new node")
        run = seen.finish(fault_at, old)

    status = hactl_json(lab, "status")
    history = [e for e in hactl_json(lab, "history") if e["seq"] > last_epoch and e["vip"] == vip]
    first = history[0] if history else {}
    extra = {
        "history_gap_ms": first.get("gap_ms"),
        "from": old,
        "to": first.get("to"),
        "controller_leader_was_on_it": leader == old,
    }
    record_gap(lab.layout.mode, fault, run, vip, extra)

    run.check_one_owner()
    assert run.outage.new_node is not None and run.outage.new_node != old
    vips = {v["address"]: v for v in status["vips"]}
    new_owner = vips[vip]["owner"]
    assert new_owner == run.outage.new_node
    nodes = {n["name"]: n for n in status["nodes"]}
    assert nodes[new_owner]["healthy"] and vip in nodes[new_owner]["vips"]
    if fault in ("kill", "partition"):
        assert old not in nodes or not nodes[old]["registered"], status
    if fault == "stop-proxy":
        assert not nodes[old]["healthy"], status
    assert history, "hactl history shows no event for the move"
    assert first["from"] == old and first["to"] == new_owner
    assert first["cause"] == MOVING[fault]


def test_controller_leader_killed_keeps_the_vip(lab: control.Lab) -> None:
    """A standby controller takes over; the VIP stays where it is, clients see no gap."""
    before = settle(lab)
    assert before.leader is not None
    leader = before.leader.id
    owners = {v: before.owner(v) for v in lab.layout.vips}
    vip = lab.layout.vips[0]
    try:
        with observed(lab, vip) as seen:
            fault_at = time.monotonic()
            assert lab.kill(leader, "controller") == [f"{leader}/controller"]

            def new_leader() -> bool:
                now = view(lab)
                return bool(now and now.leader and now.leader.id != leader)

            eventually(new_leader, 30, "a standby controller to lead")
            run = seen.finish(fault_at, None)
        record_gap(lab.layout.mode, "controller-kill", run, vip, {"old_leader": leader})
        status = hactl_json(lab, "status")
    finally:
        lab.restart(leader)
    run.check_one_owner()
    assert run.outage.failed == 0, f"{run.outage.failed} client attempts failed"
    assert status["controller"] not in (None, leader)
    assert {v["address"]: v["owner"] for v in status["vips"]} == owners


@pytest.mark.parametrize("role", ["follower", "leader"])
def test_etcd_member_killed_keeps_the_vip(lab: control.Lab, role: str) -> None:
    """Killing one etcd member of three moves no VIP and hactl still answers. A follower's loss
    opens no gap. While the survivors elect a new leader no lease can be renewed, so the VIP's
    node may fence itself for a moment (never longer than its lease) and re-adds the VIP at
    the first keepalive that succeeds."""
    before = settle(lab)
    owners = {v: before.owner(v) for v in lab.layout.vips}
    leader = etcd_leader(lab)
    others = [m.name for m in lab.layout.etcd if m.name != leader]
    member = leader if role == "leader" else others[0]
    vip = lab.layout.vips[0]
    try:
        with observed(lab, vip) as seen:
            fault_at = time.monotonic()
            assert lab.kill(member) == [member]
            # An observation window of a few lease periods without the member.
            eventually(lambda: time.monotonic() - fault_at > 6, 10, "six seconds")
            run = seen.finish(fault_at, None)
        record_gap(lab.layout.mode, f"etcd-{role}-kill", run, vip, {"member": member})
        status = hactl_json(lab, "status")
    finally:
        lab.restart(member)
        eventually(lab.etcd_healthy, 60, f"{member} to rejoin")
    run.check_one_owner()
    if role == "follower":
        assert run.outage.failed == 0, f"{run.outage.failed} client attempts failed"
    else:
        assert absent(run.watch, vip) < LEASE_TTL, f"{vip} gone for longer than a lease"
    assert {v["address"]: v["owner"] for v in status["vips"]} == owners
    assert all(n["healthy"] for n in status["nodes"]), status
