"""The lapse rule (`Timing.lapse`, the fast profile): the agent counts on `lease_ttl` from its
freshest renewed send, though etcd granted a second more, and gives the lease up itself once
that has passed; a keepalive answered later renews nothing it acts on."""

from __future__ import annotations

from dataclasses import replace

from agent.actions import Regrant, RemoveAddress, SetAddress
from agent.state import AgentCore, Assignment, Hysteresis
from haproxy_py.cluster.allowlist import AllowList
from haproxy_py.cluster.timing import PROFILES, granted_ttl

FAST = PROFILES["fast"].timing()  # lease_ttl 1, lifetime 0.5, keepalive every 0.125 s
VIP = "198.18.50.10"
LAPSED = Regrant("lease lapsed: no keepalive renewed within lease_ttl", revoke=7)


def holding(lapse: bool = True) -> AgentCore:
    """A core that holds VIP under lease 7, granted 2 s on a request sent at 0."""
    c = AgentCore("n1", replace(FAST, lapse=lapse), Hysteresis(1, 1), AllowList.parse([VIP]))
    c.lease_granted(7, 0.0, granted_ttl(c.timing), 0.0)
    c.health_sample(True, 0.0)
    actions = c.assignment_event(VIP, Assignment("n1", "assigned", 7, 10), 10, 0.01)
    assert any(isinstance(a, SetAddress) for a in actions)
    return c


def test_the_agent_asks_a_second_more_and_counts_on_lease_ttl() -> None:
    assert (FAST.lease_ttl, granted_ttl(FAST), granted_ttl(PROFILES["default"].timing())) == (
        1,
        2,
        2,
    )
    c = holding()
    assert c.clock.deadline == 1.0  # not 2: etcd's extra second is the controller's proof
    assert not c.clock.lapsed(0.99) and c.clock.lapsed(1.0)


def test_a_keepalive_answered_after_the_lapse_gives_the_lease_up() -> None:
    c = holding()
    actions = c.keepalive_ok(0.9, 2, 1.02)  # etcd renewed it, but 1.02 s after the last send
    assert actions[-1] == LAPSED
    assert RemoveAddress(VIP, LAPSED.reason, lost=True) in actions
    assert not any(isinstance(a, SetAddress) for a in actions)
    assert c.lease_id is None and not c.held
    assert c.keepalive_ok(0.95, 2, 1.05) == []  # nothing more is acted on under that lease


def test_one_answered_in_time_renews_as_before() -> None:
    c = holding()
    assert c.keepalive_ok(0.9, 2, 0.95) == [SetAddress(VIP, 0.5, False, "keepalive")]
    assert c.clock.deadline == 1.9 and c.lease_id == 7


def test_the_tick_gives_the_lease_up_while_keepalives_fail() -> None:
    c = holding()
    fenced = c.keepalive_failed(0.99)  # the fence (0.01 + 0.5 + 0.05) fell first
    assert RemoveAddress(VIP, "self-fence: no keepalive success", fenced=True, lost=True) in fenced
    assert c.lease_id == 7
    assert c.tick(1.0) == [LAPSED]
    assert c.lease_id is None


def test_without_lapse_a_late_answer_keeps_the_lease() -> None:
    c = holding(lapse=False)
    assert c.clock.deadline == 1.0  # granted 1 s: etcd's TTL is the deadline
    assert c.keepalive_ok(0.9, 1, 1.02) == [SetAddress(VIP, 0.5, False, "keepalive")]
    assert c.lease_id == 7 and c.clock.deadline == 1.9


def test_no_failsafe_grant_re_arms_past_the_lapse() -> None:
    """A round with every peer's promise good for 5 s re-arms only while the fence falls
    `fence_margin` before the lapse (1.3 here), as a keepalive would."""
    for lapse, rearmed in ((True, []), (False, [SetAddress(VIP, 0.5, False, "failsafe")])):
        c = holding(lapse)
        c.keepalive_ok(0.3, granted_ttl(c.timing), 0.31)
        assert c.failsafe_refresh(0.5, 5.0, frozenset({VIP}), 0.5) == [
            SetAddress(VIP, 0.5, False, "failsafe")  # falls at 1.05 <= 1.3 - 0.2
        ]
        assert c.failsafe_refresh(0.6, 5.0, frozenset({VIP}), 0.6) == rearmed  # 1.15 > 1.1
