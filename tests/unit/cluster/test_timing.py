"""The safety inequality: exact numbers at the defaults, and properties over every timing."""

from __future__ import annotations

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from haproxy_py.cluster.timing import (
    FENCE_SLACK,
    Timing,
    defaults,
    etcd_min_ttl,
    fence_deadline,
    latest_rearm,
    problems,
    reassign_delay,
    unfenced_delay,
)

DEFAULT = Timing(2, 0.25, 1.0, 0.2)
FAST = Timing(1, 0.125, 0.5, 0.2, etcd_election_timeout=0.5, etcd_heartbeat_interval=0.05)


def test_the_default_profile_in_numbers() -> None:
    assert DEFAULT.keepalive_timeout == 0.5
    assert latest_rearm(DEFAULT) == pytest.approx(0.75)  # 2 - 0.2 - 1 - 0.05
    assert fence_deadline(DEFAULT) == pytest.approx(1.8)  # 0.2 s before the lease can end
    assert reassign_delay(DEFAULT) == 0.0  # the controller assigns at once
    # the address alone: 0.75 + 1 + 1.25 - 2 = 1 s the controller would have to wait
    assert unfenced_delay(DEFAULT) == pytest.approx(1.0)
    assert problems(DEFAULT) == []


def test_the_fast_profile_needs_a_fast_etcd() -> None:
    assert problems(FAST) == []
    assert FAST.keepalive_timeout == 0.25
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


timings = st.builds(
    Timing,
    lease_ttl=st.integers(1, 30),
    keepalive_interval=st.floats(0.01, 10),
    address_lifetime=st.floats(0.1, 20),
    fence_margin=st.floats(0, 2),
    kernel_slack=st.floats(0, 0.5),
    keepalive_timeout=st.floats(0, 10),
    etcd_election_timeout=st.sampled_from([0.5, 1.0]),
    etcd_heartbeat_interval=st.sampled_from([0.05, 0.1]),
)


@given(timings, st.floats(0, 1e6), st.floats(0, 1))
def test_an_accepted_timing_never_lets_the_fence_outlive_the_lease(
    t: Timing, sent: float, answered_after: float
) -> None:
    """Any keepalive answered within its timeout may re-arm, and the fence it sets falls
    `fence_margin` before the earliest moment etcd can expire the lease."""
    assume(problems(t) == [])
    delay = answered_after * t.keepalive_timeout
    assert delay <= latest_rearm(t) + 1e-9  # the core lets this answer re-arm
    fence = sent + delay + t.address_lifetime + t.kernel_slack
    assert fence <= sent + t.lease_ttl - t.fence_margin + 1e-6
    assert reassign_delay(t) == 0.0


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
