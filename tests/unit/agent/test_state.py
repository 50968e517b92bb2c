"""The agent's decision core: scenarios step by step, then random histories checked against the
three safety rules (lifetime within the lease, re-arm only after a keepalive, release at once
when unhealthy)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from agent.actions import (
    AckRelease,
    Action,
    KeepaliveNow,
    PublishNode,
    Refused,
    Regrant,
    RemoveAddress,
    Revoke,
    SetAddress,
    StartGarp,
    StopGarp,
)
from agent.state import ASSIGNED, RELEASING, AgentCore, Assignment, Hysteresis
from haproxy_py.cluster.agent_config import Timing
from haproxy_py.cluster.allowlist import AllowList
from haproxy_py.cluster.intents import Cause
from haproxy_py.cluster.timing import fence_deadline

TIMING = Timing(lease_ttl=2, keepalive_interval=0.5, address_lifetime=1, fence_margin=0.2)
Op = tuple[Any, ...]
VIP = "198.18.50.10"
VIP2 = "198.18.50.11"
FOREIGN = "198.18.50.1"  # a backend's or the gateway's address: never on the allow-list
ALLOWED = AllowList.parse(["198.18.50.8/30", VIP2])


def core(rise: int = 1, fall: int = 1) -> AgentCore:
    return AgentCore("n1", TIMING, Hysteresis(rise, fall), ALLOWED)


def ready(c: AgentCore, now: float = 0.0, lease: int = 7) -> None:
    """Lease granted and proxy healthy."""
    c.lease_granted(lease, now, 2, now)
    c.health_sample(True, now)


def assign(owner: str = "n1", state: str = ASSIGNED, lease: int = 7, rev: int = 10) -> Assignment:
    return Assignment(owner=owner, state=state, lease=lease, revision=rev)


def kinds(actions: list[Action]) -> list[str]:
    return [type(a).__name__ for a in actions]


# --- scenarios -------------------------------------------------------------------------------


def test_assigned_vip_is_added_announced_and_published() -> None:
    c = core()
    ready(c)
    actions = c.assignment_event(VIP, assign(), 10, 0.1)
    assert actions == [
        SetAddress(VIP, 1, True, f"{VIP} is absent, must be present"),
        StartGarp(VIP),
        PublishNode(),
    ]
    assert set(c.held) == {VIP}


def test_no_vip_before_the_proxy_has_proven_healthy() -> None:
    c = core(rise=2)
    c.lease_granted(7, 0.0, 2, 0.0)
    c.health_sample(True, 0.0)
    actions = c.assignment_event(VIP, assign(), 10, 0.0)
    assert not any(isinstance(a, SetAddress) for a in actions)
    assert AckRelease(VIP, 10, "proxy unhealthy") in actions
    c.health_sample(True, 0.1)
    assert c.health.healthy


def test_keepalive_rearms_held_addresses_only_after_success() -> None:
    c = core()
    ready(c)
    c.assignment_event(VIP, assign(), 10, 0.0)
    assert c.keepalive_failed(0.5) == []
    assert c.keepalive_ok(0.5, 2, 0.51) == [SetAddress(VIP, 1, False, "keepalive")]
    assert c.held[VIP] == 0.51 + 1 + TIMING.kernel_slack


def test_a_keepalive_answered_after_the_rearm_window_arms_nothing_and_asks_again() -> None:
    """It renewed the lease, but a fence armed on it could outlast a revoke that followed the
    send by more than the controller's embargo (`timing.fence_deadline`)."""
    c = core()
    ready(c)
    c.assignment_event(VIP, assign(), 10, 0.0)
    late = 0.5 + TIMING.rearm_window + 0.01
    assert c.keepalive_ok(0.5, 2, late) == [KeepaliveNow()]
    assert c.held[VIP] == 0.0 + 1 + TIMING.kernel_slack  # still the old fence
    assert c.keepalive_ok(late, 2, late + 0.01) == [SetAddress(VIP, 1, False, "keepalive")]


def test_a_new_assignment_long_after_the_last_keepalive_waits_for_the_next() -> None:
    c = core()
    ready(c)
    actions = c.assignment_event(VIP, assign(), 10, TIMING.rearm_window + 0.01)
    assert actions == [KeepaliveNow()] and VIP not in c.held


def test_self_fence_when_keepalives_stop() -> None:
    c = core()
    ready(c)
    c.assignment_event(VIP, assign(), 10, 0.0)
    assert c.tick(0.99) == []
    actions = c.tick(1.0)  # nominal kernel expiry of an address set at 0
    assert actions == [
        RemoveAddress(VIP, "self-fence: no keepalive success", fenced=True, lost=True),
        StopGarp(VIP),
        PublishNode(),
    ]
    assert c.fenced and not c.held
    # no keepalive has succeeded since: the VIP is not taken back even though it is still assigned
    assert not any(isinstance(a, SetAddress) for a in c.assignment_event(VIP, assign(), 10, 1.2))
    # a fresh keepalive lifts the fence
    actions = c.keepalive_ok(1.3, 2, 1.31)
    assert SetAddress(VIP, 1, True, f"{VIP} is absent, must be present") in actions
    assert not c.fenced


def test_after_a_stall_the_fence_drops_what_passed_its_deadline_once() -> None:
    c = core()
    ready(c)
    c.assignment_event(VIP, assign(), 10, 0.0)
    assert c.fence(0.5) == []
    # frozen for 5 s: what the daemon runs before its next step
    assert c.fence(5.5) == [
        RemoveAddress(VIP, "self-fence: no keepalive success", fenced=True, lost=True),
        StopGarp(VIP),
        PublishNode(),
    ]
    assert c.fenced and not c.held
    assert c.fence(5.5) == []
    # the keepalive sent before the freeze and answered after it re-arms nothing
    assert not any(isinstance(a, SetAddress) for a in c.keepalive_ok(0.5, 2, 5.5))


def test_a_restarted_agent_has_its_clients_of_every_vip_it_does_not_hold_closed() -> None:
    """A killed agent's proxy may still carry clients of a VIP this node lost meanwhile."""
    c = core()
    ready(c, lease=8)
    actions = c.assignments_snapshot({VIP: assign(lease=7), VIP2: assign("n2")}, 20, 0.0)
    lost = [a.vip for a in actions if isinstance(a, RemoveAddress) and a.lost]
    assert lost == [VIP, VIP2]
    # later snapshots and planned releases leave that to the hand-over after the key's delete
    assert c.assignments_snapshot({VIP: assign(lease=8, rev=21)}, 21, 0.1)[0] == SetAddress(
        VIP, 1, True, f"{VIP} is absent, must be present"
    )
    released = c.assignment_event(VIP, assign(state=RELEASING, lease=8, rev=22), 22, 0.2)
    assert [a for a in released if isinstance(a, RemoveAddress)] == [
        RemoveAddress(VIP, "releasing")
    ]


def test_stale_deadline_asks_for_a_keepalive_instead_of_adding() -> None:
    c = core()
    ready(c)
    # 0.8 s after the last keepalive, an address set now could outlive deadline - margin
    actions = c.assignment_event(VIP, assign(), 10, 0.8)
    assert actions == [KeepaliveNow()]
    assert c.assignment_event(VIP2, assign(rev=11), 11, 0.8) == []  # asked once
    actions = c.keepalive_ok(0.8, 2, 0.81)
    assert [a for a in actions if isinstance(a, SetAddress)] == [
        SetAddress(VIP, 1, True, f"{VIP} is absent, must be present"),
        SetAddress(VIP2, 1, True, f"{VIP2} is absent, must be present"),
    ]


def test_expired_lease_drops_everything_and_regrants() -> None:
    c = core()
    ready(c)
    c.assignment_event(VIP, assign(), 10, 0.0)
    actions = c.keepalive_ok(0.5, 0, 0.51)
    assert actions == [RemoveAddress(VIP, "lease lost", lost=True), StopGarp(VIP), Regrant()]
    assert c.lease_id is None
    # the new lease must not revive the assignment bound to the old one
    actions = c.lease_granted(8, 0.6, 2, 0.6)
    assert actions == [PublishNode()]
    # a late put of the old assignment is stale too
    assert c.assignment_event(VIP, assign(lease=7, rev=11), 11, 0.6) == []
    actions = c.assignment_event(VIP, assign(lease=8, rev=12), 12, 0.6)
    assert isinstance(actions[0], SetAddress)


def test_unhealthy_proxy_releases_at_once_and_deletes_the_key() -> None:
    c = core(fall=2)
    ready(c)
    c.assignment_event(VIP, assign(), 10, 0.0)
    assert c.health_sample(False, 0.1) == []
    actions = c.health_sample(False, 0.2)
    assert actions == [
        PublishNode(),
        RemoveAddress(VIP, "proxy unhealthy"),
        StopGarp(VIP),
        PublishNode(),
    ]
    # the key goes once a kernel dump shows the address gone
    assert c.kernel_addresses(set(), 0.21) == [
        AckRelease(VIP, 10, "proxy unhealthy"),
        PublishNode(),
    ]
    # one good sample in between resets the fall count
    c2 = core(fall=2)
    ready(c2)
    c2.health_sample(False, 0.1)
    c2.health_sample(True, 0.15)
    assert c2.health_sample(False, 0.2) == []


def test_planned_release_removes_then_acknowledges() -> None:
    c = core()
    ready(c)
    c.assignment_event(VIP, assign(), 10, 0.0)
    actions = c.assignment_event(VIP, assign(state=RELEASING, rev=11), 11, 0.1)
    assert actions == [RemoveAddress(VIP, "releasing"), StopGarp(VIP), PublishNode()]
    assert c.kernel_addresses(set(), 0.15) == [AckRelease(VIP, 11, "released"), PublishNode()]
    assert c.acked == {VIP: 11}  # published in the node record until the key changes
    assert c.assignment_event(VIP2, None, 12, 0.2) == []
    assert c.assignments_snapshot({VIP: assign(state=RELEASING, rev=11)}, 12, 0.3) == []
    # an acknowledged assignment is never held again, even if it turns back to assigned
    assert c.assignment_event(VIP, assign(rev=11), 13, 0.4) == []
    assert VIP not in c.held
    # the controller gave it to n2: the acknowledgement has done its job
    c.assignment_event(VIP, assign(owner="n2", lease=9, rev=14), 14, 0.5)
    assert c.acked == {}


def test_vip_taken_away_without_a_release_has_its_clients_closed() -> None:
    """Given on, or its key deleted with a lease the controller revoked (an owner failing its
    probes): no release of this node's told the proxy's clients, so the removal must."""
    c = core()
    ready(c)
    c.assignment_event(VIP, assign(), 10, 0.0)
    c.assignment_event(VIP2, assign(rev=11), 11, 0.0)
    actions = c.assignment_event(VIP, assign(owner="n2", lease=9, rev=12), 12, 0.1)
    assert actions[0] == RemoveAddress(VIP, f"{VIP} belongs to n2, must be absent", lost=True)
    actions = c.assignment_event(VIP2, None, 13, 0.2)
    assert actions[0] == RemoveAddress(VIP2, f"{VIP2} is unassigned, must be absent", lost=True)


def test_late_watch_event_is_ignored() -> None:
    c = core()
    ready(c)
    c.assignments_snapshot({}, 20, 0.0)
    assert c.assignment_event(VIP, assign(rev=15), 15, 0.0) == []
    assert VIP not in c.assignments


def test_reconcile_against_the_kernel() -> None:
    c = core()
    ready(c)
    c.assignments_snapshot({VIP: assign(), VIP2: assign(owner="n2", lease=3, rev=11)}, 11, 0.0)
    assert set(c.held) == {VIP}
    # someone removed VIP and a leftover VIP2 sits on the interface; 198.18.0.7 is not a VIP
    actions = c.kernel_addresses({VIP2, "198.18.0.7"}, 0.1)
    # not one this agent let go of: its clients are closed too
    assert RemoveAddress(VIP2, f"{VIP2} is present, must be absent", lost=True) in actions
    assert SetAddress(VIP, 1, True, f"{VIP} is absent, must be present") in actions
    assert not any(getattr(a, "vip", None) == "198.18.0.7" for a in actions)


def test_stop_removes_addresses_releases_the_keys_then_revokes() -> None:
    c = core()
    ready(c)
    c.assignment_event(VIP, assign(), 10, 0.0)
    assert c.stop(0.05) == [RemoveAddress(VIP, "stopping"), StopGarp(VIP), PublishNode()]
    assert c.assignment_event(VIP, assign(rev=11), 11, 0.1) == []
    assert c.keepalive_ok(0.2, 2, 0.2) == []
    # the removal failed: still there, tried again, no release
    assert c.kernel_addresses({VIP}, 0.3) == [
        RemoveAddress(VIP, f"{VIP} is present, must be absent")
    ]
    assert c.kernel_addresses(set(), 0.4) == [AckRelease(VIP, 11, "stopping"), PublishNode()]
    # revoked only once the VIP is someone else's (the controller reassigns it as a planned
    # move) or its key is gone (nobody could take it)
    assert c.assignment_event(VIP, assign(owner="n2", lease=9, rev=12), 12, 0.5) == [Revoke()]
    assert c.kernel_addresses(set(), 0.6) == []


def test_stop_without_addresses_revokes_at_once() -> None:
    c = core()
    ready(c)
    assert c.stop(0.0) == [PublishNode(), Revoke()]


@pytest.mark.parametrize(
    ("cause", "grace"),
    [
        ("manual", True),  # a planned move: the previous owner's clients get its 1001 first
        ("node lost", False),
        ("returned", False),  # back on this node: its connections are its own and must flow
    ],
)
def test_only_a_vip_taken_over_in_a_planned_move_gets_a_grace_period(
    cause: Cause, grace: bool
) -> None:
    c = core()
    ready(c)
    (first, *_) = c.assignment_event(VIP, Assignment("n1", ASSIGNED, 7, 10, cause=cause), 10, 0.0)
    assert first == SetAddress(VIP, 1, True, f"{VIP} is absent, must be present", grace=grace)


def test_failed_removal_is_acknowledged_only_once_the_lifetime_ran_out() -> None:
    c = core()
    ready(c)
    c.assignment_event(VIP, assign(), 10, 0.0)
    c.assignment_event(VIP, assign(state=RELEASING, rev=11), 11, 0.1)
    # every dump still shows it (netlink removal keeps failing): no acknowledgement
    assert AckRelease(VIP, 11, "released") not in c.kernel_addresses({VIP}, 0.2)
    assert c.assignments_snapshot({VIP: assign(state=RELEASING, rev=11)}, 12, 0.3) == []
    # set at 0.0 with lifetime 1: the kernel has dropped it by 1.0 + slack
    assert c.tick(1.0) == []
    assert c.tick(1.0 + TIMING.kernel_slack) == [AckRelease(VIP, 11, "released"), PublishNode()]


def test_failed_add_is_forgotten_and_retried() -> None:
    c = core()
    ready(c)
    c.assignment_event(VIP, assign(), 10, 0.0)
    c.address_failed(VIP, 0.0)
    assert VIP not in c.held
    actions = c.kernel_addresses(set(), 0.1)
    assert isinstance(actions[0], SetAddress)


def test_an_address_that_cannot_be_set_for_a_lifetime_is_given_up() -> None:
    c = core()
    ready(c)
    c.assignment_event(VIP, assign(), 10, 0.0)
    c.address_failed(VIP, 0.0)
    c.kernel_addresses(set(), 0.5)
    c.address_failed(VIP, 0.5)
    actions = c.kernel_addresses(set(), 1.1)
    assert AckRelease(VIP, 10, "cannot hold the address") in actions
    assert PublishNode() in actions
    assert c.given_up == {VIP: 10}
    # a new assignment (another revision) is tried again
    c.keepalive_ok(1.2, 2, 1.2)
    actions = c.assignment_event(VIP, assign(rev=12), 12, 1.2)
    assert isinstance(actions[0], SetAddress)
    assert c.given_up == {}, "listed as unheld only while the given-up assignment lasts"


def test_refused_probe_fails_at_once_timeouts_need_the_fall_count() -> None:
    c = core(fall=3)
    ready(c)
    c.health_sample(True, 0.0)
    assert c.health_sample(False, 0.1) == []
    assert c.health_sample(False, 0.2) == []
    assert c.health.healthy
    assert c.health_sample(False, 0.3, fast=True)[0] == PublishNode()
    assert not c.health.healthy


def test_readiness_is_published_never_acted_on() -> None:
    c = core()
    ready(c)
    c.assignment_event(VIP, assign(), 10, 0.0)
    assert c.readiness_sample(0, 2) == [PublishNode()]
    assert c.readiness_sample(0, 2) == []
    assert set(c.held) == {VIP}


def test_hysteresis_counts() -> None:
    h = Hysteresis(rise=3, fall=2)
    assert [h.sample(True) for _ in range(3)] == [False, False, True]
    assert [h.sample(False) for _ in range(2)] == [False, True]
    assert not h.healthy


# --- random histories ------------------------------------------------------------------------


@dataclass
class Sim:
    """Drives a core through a random history and checks every action it returns."""

    c: AgentCore = field(default_factory=lambda: core(rise=2, fall=2))
    now: float = 0.0
    lease: int | None = None
    next_lease: int = 1
    deadline: float = 0.0  # true lease deadline: send time of the last success + TTL
    last_sent: float = 0.0  # send time of the last keepalive etcd renewed
    keepalives: int = 0
    rev: int = 1
    etcd: dict[str, Assignment] = field(default_factory=dict)
    agent_held: dict[str, int] = field(default_factory=dict)  # vip -> keepalives at last set
    kernel: dict[str, float] = field(default_factory=dict)  # vip -> drop time
    stopped: bool = False
    dump: bool = False
    log: list[Action] = field(default_factory=list)
    acked: set[tuple[str, int]] = field(default_factory=set)

    def run(self, actions: list[Action], *, health_turned_bad: bool = False) -> None:
        before = set(self.agent_held)
        self.log += actions
        for a in actions:
            if isinstance(a, SetAddress):
                self.check_set(a)
            elif isinstance(a, RemoveAddress):
                self.agent_held.pop(a.vip, None)
                self.kernel.pop(a.vip, None)
                self.dump = True
            elif isinstance(a, AckRelease):
                assert a.vip not in self.agent_held, "acknowledged while the address is held"
                assert a.vip not in self.kernel, "acknowledged while the kernel still has it"
                self.acked.add((a.vip, a.revision))
                # the controller answers: the VIP goes to another node (or nobody)
                cur = self.etcd.get(a.vip)
                if cur is not None and cur.revision == a.revision and cur.owner == "n1":
                    del self.etcd[a.vip]
                    self.rev += 1
                    self.run(self.c.assignment_event(a.vip, None, self.rev, self.now))
            elif isinstance(a, Regrant):
                self.grant()
        if self.dump:  # the daemon dumps the kernel's addresses after a removal
            self.dump = False
            self.run(self.c.kernel_addresses(set(self.kernel), self.now))
        if health_turned_bad:
            assert not self.agent_held, "unhealthy proxy: every VIP must go in the same step"
            assert before <= {a.vip for a in actions if isinstance(a, RemoveAddress)}

    def check_set(self, a: SetAddress) -> None:
        t = TIMING
        assert not self.stopped
        assert self.c.health.healthy
        assert self.lease is not None
        gone_by = self.now + a.lifetime + t.kernel_slack
        assert gone_by <= self.deadline - t.fence_margin + 1e-9, "lifetime outlives the lease"
        # a revoke right after that keepalive: the controller's embargo still covers the fence
        assert gone_by <= self.last_sent + fence_deadline(t) + 1e-9, "fence outlives the embargo"
        owner = self.etcd.get(a.vip)
        assert owner is not None and owner.owner == "n1" and owner.state == ASSIGNED
        assert owner.lease == self.lease
        assert ALLOWED.allows(a.vip), "an address outside the allow-list was set"
        assert (a.vip, owner.revision) not in self.acked, "an acknowledged assignment held again"
        if a.new:
            assert a.vip not in self.agent_held
        else:
            assert self.agent_held[a.vip] < self.keepalives, "re-armed without a keepalive success"
        self.agent_held[a.vip] = self.keepalives
        self.kernel[a.vip] = gone_by

    def grant(self) -> None:
        self.lease = self.next_lease
        self.next_lease += 1
        self.deadline = self.now + TIMING.lease_ttl
        self.last_sent = self.now
        self.keepalives += 1
        self.run(self.c.lease_granted(self.lease, self.now, TIMING.lease_ttl, self.now))

    def keepalive(self, latency: float, outcome: str) -> None:
        if self.lease is None:
            return
        sent = self.now
        self.now += latency
        if outcome == "fail" or latency > TIMING.keepalive_timeout:
            self.run(self.c.keepalive_failed(self.now))
        elif outcome == "expired" or self.now >= self.deadline:
            self.lease = None
            self.etcd = {v: a for v, a in self.etcd.items() if a.owner != "n1"}
            self.run(self.c.keepalive_ok(sent, 0, self.now))
        else:
            self.deadline = sent + TIMING.lease_ttl
            self.last_sent = sent
            self.keepalives += 1
            self.run(self.c.keepalive_ok(sent, TIMING.lease_ttl, self.now))

    def advance(self, dt: float) -> None:
        self.now += dt
        self.kernel = {v: t for v, t in self.kernel.items() if t > self.now}
        # the kernel never keeps an address past the lease deadline minus margin
        assert all(t <= self.deadline - TIMING.fence_margin + 1e-9 for t in self.kernel.values())
        self.run(self.c.tick(self.now))

    def put(self, vip: str, owner: str, state: str, stale_lease: bool) -> None:
        lease = (self.lease or 0) if owner == "n1" and not stale_lease else 999
        self.rev += 1
        self.etcd[vip] = Assignment(owner, state, lease, self.rev)
        self.run(self.c.assignment_event(vip, self.etcd[vip], self.rev, self.now))

    def step(self, op: Op) -> None:
        kind = op[0]
        if self.stopped and kind not in ("advance",):
            return
        if kind == "advance":
            self.advance(op[1])
        elif kind == "keepalive":
            self.keepalive(op[1], op[2])
        elif kind == "health":
            was = self.c.health.healthy
            actions = self.c.health_sample(op[1], self.now)
            self.run(actions, health_turned_bad=was and not self.c.health.healthy)
        elif kind == "put":
            self.put(op[1], op[2], op[3], op[4])
        elif kind == "delete" and op[1] in self.etcd:
            del self.etcd[op[1]]
            self.rev += 1
            self.run(self.c.assignment_event(op[1], None, self.rev, self.now))
        elif kind == "snapshot":
            self.run(self.c.assignments_snapshot(dict(self.etcd), self.rev, self.now))
        elif kind == "kernel":
            self.kernel = {v: t for v, t in self.kernel.items() if t > self.now}
            for vip in set(self.agent_held) - set(self.kernel):
                del self.agent_held[vip]
            self.run(self.c.kernel_addresses(set(self.kernel), self.now))
        elif kind == "stop":
            self.stopped = True
            actions = self.c.stop(self.now)
            self.run(actions)
            assert not self.agent_held and not self.kernel
            # every key of ours released, and the revoke only after that
            assert not any(a.owner == "n1" and a.lease == self.lease for a in self.etcd.values())
            assert isinstance(self.log[-1], Revoke) or self.lease is None


VIPS = st.sampled_from([VIP, VIP2, FOREIGN])
ADVANCE = st.tuples(st.just("advance"), st.floats(0.0, 1.0))
KEEPALIVE = st.tuples(
    st.just("keepalive"),
    st.floats(0.0, 0.7),
    st.sampled_from(["ok"] * 8 + ["fail", "expired"]),
)
HEALTH = st.tuples(st.just("health"), st.sampled_from([True, True, True, False]))
PUT = st.tuples(
    st.just("put"),
    VIPS,
    st.sampled_from(["n1", "n1", "n2"]),
    st.sampled_from([ASSIGNED, ASSIGNED, RELEASING]),
    st.sampled_from([False, False, False, True]),
)
OPS = st.one_of(
    ADVANCE,
    KEEPALIVE,
    KEEPALIVE,
    HEALTH,
    PUT,
    PUT,
    st.tuples(st.just("delete"), VIPS),
    st.tuples(st.just("snapshot")),
    st.tuples(st.just("kernel")),
)
# stopping ends a history, so it comes (sometimes) at the end rather than anywhere
HISTORIES = st.tuples(st.lists(OPS, min_size=5, max_size=80), st.sampled_from([(), (("stop",),)]))
# most histories start from a healthy node that owns both VIPs, where the rules matter most
PRELUDE = [("health", True), ("health", True)] + [
    ("put", v, "n1", ASSIGNED, False) for v in (VIP, VIP2)
]


@settings(max_examples=400, deadline=None)
@given(HISTORIES, st.booleans())
def test_random_histories_keep_the_safety_rules(
    history: tuple[list[Op], tuple[Op, ...]],
    prelude: bool,
) -> None:
    sim = Sim()
    sim.grant()
    for op in [*(PRELUDE if prelude else []), *history[0], *history[1]]:
        sim.step(op)
    event("addresses set", sum(1 for a in sim.log if isinstance(a, SetAddress)) > 0)


@settings(max_examples=200, deadline=None)
@given(st.lists(OPS, min_size=5, max_size=80), st.booleans())
def test_wanted_vips_are_held_once_keepalives_flow(ops: list[Op], prelude: bool) -> None:
    """Liveness: after any history, a healthy node with a fresh keepalive holds what it owns."""
    sim = Sim()
    sim.grant()
    for op in [*(PRELUDE if prelude else []), *ops]:
        if op[0] != "stop":
            sim.step(op)
    sim.run(sim.c.health_sample(True, sim.now))
    sim.run(sim.c.health_sample(True, sim.now))
    sim.keepalive(0.01, "ok")
    if sim.lease is None:  # the last keepalive found the lease gone: the regrant happened
        return
    sim.run(sim.c.assignments_snapshot(dict(sim.etcd), sim.rev, sim.now))
    mine = {
        v
        for v, a in sim.etcd.items()
        if a.owner == "n1" and a.state == ASSIGNED and a.lease == sim.lease and ALLOWED.allows(v)
    }
    assert set(sim.c.held) == mine
    assert not any(
        a.owner == "n1" and a.state == RELEASING and a.lease == sim.lease for a in sim.etcd.values()
    ), "a releasing VIP must have been acknowledged"


def test_a_vip_outside_the_allow_list_is_refused_acknowledged_and_never_set() -> None:
    c = core()
    ready(c)
    actions = c.assignment_event(FOREIGN, assign(), 10, 0.0)
    assert actions == [
        Refused(FOREIGN),
        AckRelease(FOREIGN, 10, "not in this node's allowed_vips"),
        PublishNode(),
    ]
    assert c.refused == {FOREIGN} and FOREIGN not in c.known_vips
    # refused once: a new revision is acknowledged again, but not logged or listed again
    again = c.assignment_event(FOREIGN, assign(rev=11), 11, 0.1)
    assert again == [AckRelease(FOREIGN, 11, "not in this node's allowed_vips"), PublishNode()]
    assert not any(isinstance(a, SetAddress) for a in c.keepalive_ok(0.2, 2, 0.2))
    # an address outside the list that the kernel carries is not ours to remove either
    assert c.kernel_addresses({FOREIGN}, 0.3) == []
