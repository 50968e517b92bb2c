"""The failsafe's pure state machine (`agent.failsafe`) and the core's two hooks for it."""

from __future__ import annotations

import math

import pytest

from agent.actions import SetAddress
from agent.failsafe import MEMBER_MEMORY, Answer, Ask, BadMessage, Failsafe, Grant, Outage
from agent.failsafeloop import remembered
from agent.state import AgentCore, Assignment, Hysteresis
from haproxy_py.cluster.allowlist import AllowList
from haproxy_py.cluster.timing import Timing, failsafe_after, failsafe_promise, failsafe_round

TIMING = Timing(lease_ttl=2, keepalive_interval=0.25, address_lifetime=1.0, fence_margin=0.2)
PROMISE = failsafe_promise(TIMING)
STALE = failsafe_after(TIMING) + 0.01
VIP, VIP2 = "198.18.50.10", "198.18.50.11"
ALLOWED = AllowList.parse(["198.18.50.0/24"])


def node(name: str, members: tuple[str, ...] = ("n1", "n2", "n3")) -> Failsafe:
    fs = Failsafe(name, TIMING)
    fs.membership(members, 0.0)
    fs.etcd_ok(0.0)
    return fs


def vouch(fs: Failsafe, ask: Ask, peer: str, now: float) -> Answer:
    return Answer(ask.round, ask.holder, peer, False, (), PROMISE)


def holder_core() -> AgentCore:
    c = AgentCore("n1", TIMING, Hysteresis(1, 1), ALLOWED)
    c.lease_granted(7, 0.0, 2, 0.0)
    c.health_sample(True, 0.0)
    c.assignment_event(VIP, Assignment("n1", "assigned", 7, 10), 10, 0.0)
    return c


def test_timing_round_fits_inside_one_fence_period_and_promise_within_the_lease() -> None:
    assert failsafe_round(TIMING) < TIMING.address_lifetime / 1.5
    assert TIMING.lease_ttl >= PROMISE
    # both nodes count etcd unreachable (up to a keepalive period apart) while the fence of the
    # last keepalive still has time left for a round trip
    assert failsafe_after(TIMING) + TIMING.keepalive_interval < TIMING.address_lifetime


def test_no_round_while_etcd_answers_nor_without_vips_or_peers() -> None:
    fs = node("n1")
    assert fs.start("r1", {VIP}, failsafe_after(TIMING) - 0.01) is None
    assert fs.start("r1", set(), STALE) is None
    alone = node("n1", ("n1",))
    assert alone.start("r1", {VIP}, STALE) is None  # nobody to vouch: fence as usual
    off = Failsafe("n1", TIMING, enabled=False)
    off.membership(("n1", "n2"), 0.0)
    assert off.start("r1", {VIP}, STALE) is None


def test_a_peer_missing_from_one_read_is_still_asked_to_vouch() -> None:
    """A peer re-registering under a new lease is briefly absent from `nodes/`; if etcd fails
    right then, the holder must still ask it (not give up for want of peers), and it is
    forgotten only after MEMBER_MEMORY."""
    fs = node("n1", ("n1", "n2"))
    fs.membership(("n1",), 1.0)  # n2's record gone for a moment
    assert fs.members == {"n2"}
    ask = fs.start("r1", {VIP}, 1.0 + STALE)
    assert ask is not None and fs.round is not None and fs.round.peers == {"n2"}
    fs.membership(("n1",), MEMBER_MEMORY + 0.5)
    assert fs.members == frozenset()


def test_a_remembered_member_is_asked_at_its_last_read_address() -> None:
    known = {"n2": "198.18.0.2", "n3": "198.18.0.3"}
    read = {"n3": "198.18.0.33"}  # n2's record missing from this read
    assert remembered(known, read, {"n2", "n3"}) == {"n2": "198.18.0.2", "n3": "198.18.0.33"}
    assert remembered(known, read, {"n3"}) == {"n3": "198.18.0.33"}  # n2 forgotten


def test_every_peer_vouching_grants_a_refresh_counted_from_the_send() -> None:
    fs = node("n1")
    ask = fs.start("r1", {VIP}, STALE)
    assert ask == Ask("r1", "n1", (VIP,))
    assert fs.answered("n2", vouch(fs, ask, "n2", STALE), STALE + 0.01) is None
    grant = fs.answered("n3", vouch(fs, ask, "n3", STALE), STALE + 0.02)
    assert grant == Grant(STALE, PROMISE, frozenset({VIP}))
    assert fs.since == STALE + 0.02 and fs.rounds == 1
    assert fs.round is None


@pytest.mark.parametrize(
    ("answer", "why"),
    [
        (Answer("r1", "n1", "n2", True, (), PROMISE), "reaches etcd"),
        (Answer("r1", "n1", "n2", False, (VIP,), PROMISE), f"holds {VIP}"),
        (Answer("r1", "n1", "n2", False, (), 0.5), "promised 0.5 s"),
    ],
)
def test_one_disagreeing_peer_fails_the_round(answer: Answer, why: str) -> None:
    fs = node("n1")
    ask = fs.start("r1", {VIP}, STALE)
    assert ask is not None
    assert fs.answered("n2", answer, STALE) is None
    assert fs.failed is not None and why in fs.failed
    assert fs.answered("n3", vouch(fs, ask, "n3", STALE), STALE) is None  # round is over


def test_a_late_answer_fails_the_round() -> None:
    fs = node("n1", ("n1", "n2"))
    ask = fs.start("r1", {VIP}, STALE)
    assert ask is not None
    late = STALE + failsafe_round(TIMING) + 0.01
    assert fs.answered("n2", vouch(fs, ask, "n2", late), late) is None
    assert fs.failed == "n2: answered too late"


def test_replayed_forged_or_misaddressed_answers_are_ignored() -> None:
    fs = node("n1", ("n1", "n2"))
    old = fs.start("r1", {VIP}, STALE)
    assert old is not None
    fs.fail("n2: no answer")
    new = fs.start("r2", {VIP}, STALE + 0.3)
    assert new is not None
    now = STALE + 0.31
    assert fs.answered("n2", vouch(fs, old, "n2", now), now) is None  # earlier round's answer
    assert fs.answered("n2", Answer("r2", "n9", "n2", False, (), PROMISE), now) is None
    assert fs.answered("n3", Answer("r2", "n1", "n2", False, (), PROMISE), now) is None
    assert fs.answered("n9", Answer("r2", "n1", "n9", False, (), PROMISE), now) is None
    assert fs.round is not None and fs.failed == "n2: no answer"  # none counted either way
    assert fs.answered("n2", vouch(fs, new, "n2", now), now) is not None


def test_peer_promises_only_when_it_cannot_reach_etcd_and_holds_none() -> None:
    peer = node("n2")
    ask = Ask("r1", "n1", (VIP,))
    reachable = peer.ask("n1", ask, set(), 0.1)
    assert reachable.etcd and reachable.promise == 0.0 and peer.promised_until(0.1) == -math.inf
    holding = peer.ask("n1", ask, {VIP}, STALE)
    assert holding.holds == (VIP,) and holding.promise == 0.0
    ok = peer.ask("n1", ask, {VIP2}, STALE)
    assert ok == Answer("r1", "n1", "n2", False, (), PROMISE)
    assert peer.promised_until(STALE) == STALE + PROMISE
    assert peer.promised_until(STALE + PROMISE) == -math.inf  # over


def test_peer_whose_latest_etcd_call_failed_vouches_before_the_silence_counts() -> None:
    """A peer's calls lag the holder's by up to a keepalive period: its latest failure is
    answer enough, and its next success makes it say "reaches etcd" again."""
    peer = node("n2")
    ask = Ask("r1", "n1", (VIP,))
    peer.etcd_failed(0.1)
    assert peer.reachable(0.1) and not peer.ask("n1", ask, set(), 0.1).etcd
    assert peer.promised_until(0.1) == 0.1 + PROMISE
    peer.etcd_ok(0.2)
    assert peer.ask("n1", Ask("r2", "n1", (VIP,)), set(), 0.2).etcd


def test_peer_refuses_a_holder_that_is_not_its_certificate_or_not_a_member() -> None:
    peer = node("n2")
    with pytest.raises(BadMessage, match="certificate"):
        peer.ask("n3", Ask("r1", "n1", (VIP,)), set(), STALE)
    with pytest.raises(BadMessage, match="membership"):
        peer.ask("n9", Ask("r1", "n9", (VIP,)), set(), STALE)


def test_disabled_peer_never_promises() -> None:
    peer = Failsafe("n2", TIMING, enabled=False)
    peer.membership(("n1", "n2"), 0.0)
    answer = peer.ask("n1", Ask("r1", "n1", (VIP,)), set(), 100.0)
    assert answer.etcd and answer.promise == 0.0


def test_etcd_returning_reports_the_outage_once() -> None:
    fs = node("n1", ("n1", "n2"))
    ask = fs.start("r1", {VIP}, STALE)
    assert ask is not None
    fs.answered("n2", vouch(fs, ask, "n2", STALE), STALE)
    assert fs.etcd_ok(30.0) == Outage(STALE, 30.0, 1)
    assert fs.etcd_ok(30.1) is None


def test_messages_parse_strictly() -> None:
    ask = Ask("r1", "n1", (VIP,))
    assert Ask.from_dict(ask.to_dict()) == ask
    answer = Answer("r1", "n1", "n2", False, (), PROMISE)
    assert Answer.from_dict(answer.to_dict()) == answer
    for bad in ([], {"round": "", "holder": "n1", "vips": []}, {**ask.to_dict(), "vips": "x"}):
        with pytest.raises(BadMessage):
            Ask.from_dict(bad)
    with pytest.raises(BadMessage):
        Ask.from_dict({**ask.to_dict(), "vips": [VIP] * 65})
    with pytest.raises(BadMessage):
        Answer.from_dict({**answer.to_dict(), "etcd": "no"})
    with pytest.raises(BadMessage):
        Answer.from_dict({**answer.to_dict(), "promise": -1})


# --- the core's hooks --------------------------------------------------------------------------


def test_grant_re_arms_held_vips_within_the_promise_and_never_adds_one() -> None:
    c = holder_core()
    assert set(c.held) == {VIP}
    # a VIP assigned but not held (not yet armed) stays unarmed under the failsafe
    c.assignment_event(VIP2, Assignment("n1", "assigned", 7, 11), 11, 0.0)
    c.held.pop(VIP2)
    sent = 0.6
    actions = c.failsafe_refresh(sent, PROMISE, frozenset({VIP, VIP2}), sent + 0.01)
    assert actions == [SetAddress(VIP, 1.0, False, "failsafe")]
    assert c.held[VIP] <= sent + PROMISE - TIMING.fence_margin
    # too late in the round: the refreshed fence would outlive the promise
    assert c.failsafe_refresh(sent, PROMISE, frozenset({VIP}), sent + 0.6) == []


def test_without_a_grant_the_holder_fences_on_its_normal_deadline() -> None:
    c = holder_core()
    deadline = c.held[VIP]
    assert c.fence(deadline - TIMING.kernel_slack - 0.01) == []
    assert VIP not in {a.vip for a in c.fence(deadline) if isinstance(a, SetAddress)}
    assert VIP not in c.held


def test_a_promise_holds_new_addresses_back_until_it_ends() -> None:
    c = AgentCore("n2", TIMING, Hysteresis(1, 1), ALLOWED)
    c.lease_granted(8, 0.0, 2, 0.0)
    c.health_sample(True, 0.0)
    c.arm_hold = 0.2
    actions = c.assignment_event(VIP, Assignment("n2", "assigned", 8, 12), 12, 0.1)
    assert not any(isinstance(a, SetAddress) for a in actions) and VIP not in c.held
    assert c.converge(0.2)[0] == SetAddress(VIP, 1.0, True, f"{VIP} is absent, must be present")
