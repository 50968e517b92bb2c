"""The safety inequality: exact numbers at the defaults, and properties over every timing."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import Phase, assume, find, given, settings
from hypothesis import strategies as st

from agent.arming import LeaseClock
from haproxy_py.cluster.timing import (
    FENCE_SLACK,
    PROFILES,
    Timing,
    defaults,
    etcd_min_ttl,
    fence_deadline,
    granted_ttl,
    lapse_proven,
    latest_rearm,
    probe_limit,
    problems,
    reassign_delay,
    unfenced_delay,
)

DEFAULT = Timing(2, 0.25, 1.0, 0.2)
FAST = Timing(1, 0.125, 0.5, 0.2, etcd_election_timeout=0.5, etcd_heartbeat_interval=0.05)


def test_the_default_profile_in_numbers() -> None:
    assert DEFAULT.keepalive_timeout == 0.5
    assert DEFAULT.rearm_window == 0.25
    assert latest_rearm(DEFAULT) == pytest.approx(0.25)
    # the revoke path's embargo: 0.25 + 1 + 0.05, 0.7 s before the lease could end
    assert fence_deadline(DEFAULT) == pytest.approx(1.3)
    assert probe_limit(DEFAULT) == pytest.approx(0.5)
    assert reassign_delay(DEFAULT) == 0.0  # the controller assigns at once
    # the address alone: 0.25 + 1 + 1.25 - 2 = 0.5 s the controller would have to wait
    assert unfenced_delay(DEFAULT) == pytest.approx(0.5)
    assert problems(DEFAULT) == []


def test_the_fast_profile_needs_a_fast_etcd() -> None:
    assert problems(FAST) == []
    assert FAST.keepalive_timeout == 0.25 == FAST.rearm_window
    assert fence_deadline(FAST) == pytest.approx(0.8)
    slow_etcd = Timing(1, 0.125, 0.5, 0.2)
    assert ["below etcd's minimum lease TTL (2 s" in p for p in problems(slow_etcd)] == [True]


@pytest.mark.parametrize(
    ("election", "heartbeat", "ttl"),
    [(1.0, 0.1, 2), (0.5, 0.05, 1), (0.5, 0.1, 1), (1.0, 0.05, 2), (2.0, 0.1, 3), (0.3, 0.1, 1)],
)
def test_etcd_minimum_ttl(election: float, heartbeat: float, ttl: int) -> None:
    """etcd 3.4: ceil((3 * electionTicks / 2) * heartbeat); measured 1 -> 2 at 1000/100 ms."""
    assert etcd_min_ttl(election, heartbeat) == ttl


def test_each_rule_is_refused_with_its_numbers() -> None:
    late = problems(Timing(2, 0.2, 1.0, 0.2, keepalive_timeout=0.76))
    assert late == [
        "keepalive_timeout (0.76) + address_lifetime (1) + fence slack (0.05) + fence_margin "
        "(0.2) = 2.01 s exceeds lease_ttl (2 s): the fence could outlive the lease; raise "
        "lease_ttl or lower the others"
    ]
    flappy = problems(Timing(3, 0.8, 1.0, 0.2, keepalive_timeout=0.3))
    assert len(flappy) == 1 and "= 1.1 s exceeds address_lifetime (1 s)" in flappy[0]
    deaf = problems(Timing(2, 0.25, 1.0, 0.2, keepalive_timeout=0.3, rearm_window=0.4))
    assert deaf == [
        "rearm_window (0.4) exceeds keepalive_timeout (0.3): an answer the agent no longer "
        "waits for cannot arm; lower rearm_window"
    ]


timings = st.builds(
    Timing,
    lease_ttl=st.integers(1, 30),
    keepalive_interval=st.floats(0.01, 10),
    address_lifetime=st.floats(0.1, 20),
    fence_margin=st.floats(0, 2),
    kernel_slack=st.floats(0, 0.5),
    keepalive_timeout=st.floats(0, 10),
    rearm_window=st.one_of(st.just(0.0), st.floats(0, 1)),  # 0: the derived default
    etcd_election_timeout=st.sampled_from([0.5, 1.0]),
    etcd_heartbeat_interval=st.sampled_from([0.05, 0.1]),
)


# --- the arithmetic the agent arms by (`agent.arming`), against both ways a VIP moves on ------
# A history: keepalives etcd renewed (send offsets), then arms at offsets after the last one.
# The lease path: every fence falls `fence_margin` before the lease can end. The revoke path:
# with every renewed keepalive sent before the revoke, every fence falls within the
# controller's embargo of it. Each bound is also tight: drop one of its terms and a history
# that breaks it exists (hypothesis finds it), so these tests cannot pass vacuously.

histories = st.tuples(
    st.lists(st.floats(0, 5), min_size=1, max_size=4),  # gaps between renewed keepalives
    st.lists(st.floats(0, 2), min_size=1, max_size=4),  # arm times after the last send
)


def fences(t: Timing, history: tuple[list[float], list[float]]) -> tuple[float, list[float]]:
    """(send time of the last renewed keepalive, the fall time of every fence the agent's
    arithmetic lets it arm afterwards)."""
    gaps, arms = history
    clock, sent = LeaseClock(t), 0.0
    for gap in gaps:
        sent += gap
        clock.renewed(sent, t.lease_ttl)
    return sent, [clock.expiry(sent + a) for a in arms if clock.may_arm(sent + a)]


def lease_bound(t: Timing) -> float:
    return t.lease_ttl - t.fence_margin


def embargo_bound(t: Timing) -> float:
    return fence_deadline(t)


def breaks(t: Timing, history: tuple[list[float], list[float]], bound: float) -> bool:
    """A fence falls later than `bound` after the last renewed keepalive was sent (for the
    revoke path: the revoke landed just after it, the worst case)."""
    last, falls = fences(t, history)
    return any(f > last + bound + 1e-6 for f in falls)


@given(timings, histories)
def test_an_accepted_timing_never_lets_a_fence_outlive_the_lease(
    t: Timing, history: tuple[list[float], list[float]]
) -> None:
    assume(problems(t) == [])
    assert not breaks(t, history, lease_bound(t))
    assert reassign_delay(t) == 0.0


@given(timings, histories)
def test_after_a_revoke_every_fence_falls_within_the_embargo(
    t: Timing, history: tuple[list[float], list[float]]
) -> None:
    assume(problems(t) == [])
    assert not breaks(t, history, embargo_bound(t))
    assert embargo_bound(t) <= lease_bound(t) + 1e-9  # never longer than the lease path


@pytest.mark.parametrize(
    "bound",
    [
        lambda t: embargo_bound(t) - t.rearm_window,
        lambda t: embargo_bound(t) - t.address_lifetime,
        lambda t: embargo_bound(t) - t.kernel_slack,
    ],
    ids=["rearm_window", "address_lifetime", "kernel_slack"],
)
def test_each_term_of_the_embargo_is_needed(bound: Callable[[Timing], float]) -> None:
    """Drop one term of the embargo and the search finds an accepted timing and a history
    whose fence falls later than the weakened bound."""
    derived = st.builds(
        lambda ttl, slack: Timing(ttl, defaults(ttl)[1], defaults(ttl)[0], 0.2, slack),
        st.integers(2, 30),
        st.floats(0, 0.3),
    )
    example = find(
        st.tuples(derived, histories),
        lambda ex: problems(ex[0]) == [] and breaks(ex[0], ex[1], bound(ex[0])),
        settings=settings(max_examples=5000, database=None, phases=[Phase.generate]),
    )
    assert breaks(example[0], example[1], bound(example[0]))


@given(timings)
def test_an_accepted_timing_survives_one_slow_keepalive(t: Timing) -> None:
    """The next keepalive, sent an interval after a re-arm and failing only at its timeout,
    still leaves time before the fence falls."""
    assume(problems(t) == [])
    assert t.keepalive_interval + t.keepalive_timeout <= t.address_lifetime + 1e-9


@given(st.integers(1, 3600), st.floats(0, 0.3))
def test_derived_defaults_hold_for_every_ttl(ttl: int, margin: float) -> None:
    lifetime, interval = defaults(ttl)
    t = Timing(ttl, interval, lifetime, margin, etcd_election_timeout=0.5)
    assume(ttl >= 2 or margin <= 0.2)  # TTL 1 has room for the default margin, no more
    assert problems(t) == []
    assert t.keepalive_timeout >= t.keepalive_interval
    assert t.kernel_slack == FENCE_SLACK


# --- the lapse path (`Timing.lapse`): the controller revokes on the first 0 s reading --------
# A history of keepalives: each leaves `gap` after the previous answer, is renewed by etcd
# `renew` after its send and answered to the agent `answer` later; the agent arms at offsets
# after each answer it acts on. etcd renews every keepalive that reaches it (also one the
# agent will refuse) while the lease lives. At every first 0 reading (the last renewal more
# than granted - 1 s before), every fence the agent ever armed must have fallen
# `fence_margin` earlier: then the controller may revoke and reassign at once.

Keepalive = tuple[float, float, float]  # gap, renew, answer (fractions of the timeout)
lapse_histories = st.lists(
    st.tuples(
        st.tuples(st.floats(0, 1.5), st.floats(0, 1), st.floats(0, 1)),
        st.lists(st.floats(0, 1.5), max_size=3),
    ),
    min_size=1,
    max_size=12,
)


def lapse_breaks(
    t: Timing,
    history: list[tuple[Keepalive, list[float]]],
    granted: int,
    proven: Callable[[int, int], bool],
    agent_lapses: bool = True,
) -> bool:
    """A 0 reading that `proven` takes as proof comes while a fence has not fallen
    `fence_margin` before it (or is armed later)."""
    clock = LeaseClock(t)
    clock.renewed(0.0, granted)
    renewals, falls, answered = [0.0], [], 0.0
    for (gap, renew, answer), arms in history:
        sent = answered + gap
        renewed = sent + renew * t.keepalive_timeout
        if renewed >= renewals[-1] + granted:
            break  # the lease ran out first: etcd renews it no more
        renewals.append(renewed)
        answered = renewed + answer * t.keepalive_timeout
        if agent_lapses and clock.lapsed(answered):
            break  # given up: nothing more is acted on, nothing more is sent
        clock.renewed(sent, granted)
        falls += [clock.expiry(answered + a) for a in arms if clock.may_arm(answered + a)]
    zeros = [  # the first instant the lease reads 0 s left, when no renewal came before it
        zero
        for u, later in zip(renewals, [*renewals[1:], math.inf], strict=True)
        if (zero := u + granted - 1 + 1e-6) < later
    ]
    return proven(t.lease_ttl, granted) and any(
        f > zero - t.fence_margin + 1e-6 for zero in zeros for f in falls
    )


lapse_timings = st.builds(lambda t: replace(t, lapse=True), timings).filter(
    lambda t: problems(t) == []
)


@pytest.mark.parametrize("name", list(PROFILES))
def test_each_profile_keeps_its_path_safe(name: str) -> None:
    """default: the lease path (fences fall before the lease can end); fast: the lapse path
    (fences fall before the first 0 reading, which then proves the lapse)."""
    t = PROFILES[name].timing()
    assert problems(t) == []

    @given(histories, lapse_histories)
    @settings(max_examples=300)
    def check(lease: tuple[list[float], list[float]], lapse: list[Any]) -> None:
        assert not breaks(t, lease, lease_bound(t))
        if t.lapse:
            assert not lapse_breaks(t, lapse, granted_ttl(t), lapse_proven)

    check()


@given(lapse_timings, lapse_histories)
def test_an_accepted_lapsing_timing_is_proven_by_its_first_zero(
    t: Timing, history: list[Any]
) -> None:
    assert not lapse_breaks(t, history, granted_ttl(t), lapse_proven)


@pytest.mark.parametrize(
    "weakened",
    [
        # the truncated second dropped: etcd granted lease_ttl, and a 0 reading taken as proof
        lambda t, h: lapse_breaks(t, h, t.lease_ttl, lambda lapse, g: 0 < lapse <= g),
        # the lapse dropped: the agent still acts on a keepalive answered after lease_ttl
        lambda t, h: lapse_breaks(t, h, granted_ttl(t), lapse_proven, agent_lapses=False),
    ],
    ids=["truncated_second", "lapse_rule"],
)
def test_each_term_of_the_lapse_path_is_needed(
    weakened: Callable[[Timing, list[Any]], bool],
) -> None:
    example = find(
        st.tuples(st.just(PROFILES["fast"].timing()), lapse_histories),
        lambda ex: weakened(ex[0], ex[1]),
        settings=settings(max_examples=5000, database=None, phases=[Phase.generate]),
    )
    assert weakened(example[0], example[1])
