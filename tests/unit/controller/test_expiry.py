"""The lease-expiry proof from whole-second TimeToLive readings."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from controller.expiry import COVER, ExpiryProof, Verdict


def test_a_lease_read_at_zero_for_a_second_of_covered_readings_is_expired() -> None:
    p = ExpiryProof()
    assert p.reading(0.0, 0.01, 1) is Verdict.ALIVE
    assert p.reading(0.1, 0.11, 0) is Verdict.DYING  # less than 1 s left at 0.11
    assert p.next_reading(0.11) == 0.36
    assert p.reading(0.36, 0.37, 0) is Verdict.DYING
    assert p.reading(0.61, 0.62, 0) is Verdict.DYING
    assert p.reading(0.86, 0.87, 0) is Verdict.DYING
    assert p.next_reading(0.87) == 1.11  # the proof completes 1 s after the first 0
    assert p.reading(1.11, 1.12, 0) is Verdict.EXPIRED


def test_a_lapsing_owner_is_proven_by_its_first_zero() -> None:
    """lapse 1 s of a 2 s lease: a 0 (the last renewal over 1 s ago) proves it; a lapse the
    reading cannot prove (2 s of 2 s) or none leaves the slow proof."""
    assert ExpiryProof(lapse=1).reading(0.0, 0.01, 0, granted=2) is Verdict.EXPIRED
    assert ExpiryProof(lapse=1).reading(0.0, 0.01, 1, granted=2) is Verdict.ALIVE
    assert ExpiryProof(lapse=2).reading(0.0, 0.01, 0, granted=2) is Verdict.DYING
    assert ExpiryProof().reading(0.0, 0.01, 0, granted=2) is Verdict.DYING
    assert ExpiryProof(lapse=1).reading(0.0, 0.01, None, granted=2) is Verdict.ALIVE


def test_a_refresh_seen_in_between_starts_over() -> None:
    p = ExpiryProof()
    p.reading(0.0, 0.01, 0)
    assert p.reading(0.5, 0.51, 1) is Verdict.ALIVE
    assert p.reading(0.6, 0.61, 0) is Verdict.DYING
    assert p.reading(1.05, 1.06, 0) is Verdict.DYING  # 1 s after the *new* first 0: not yet
    assert p.reading(1.5, 1.51, 0) is Verdict.DYING
    assert p.reading(1.61, 1.62, 0) is Verdict.EXPIRED


def test_a_gap_a_failure_or_a_slow_answer_breaks_the_proof() -> None:
    p = ExpiryProof()
    p.reading(0.0, 0.01, 0)
    assert p.reading(COVER, 0.52, 0) is Verdict.DYING  # a gap: starts over at 0.52
    assert p.reading(1.05, 1.06, 0) is Verdict.DYING
    assert p.reading(1.4, 1.41, None) is Verdict.ALIVE  # a failed call proves nothing
    assert p.reading(1.5, 1.51, 0) is Verdict.DYING
    assert p.reading(1.9, 1.91, 0) is Verdict.DYING
    assert p.reading(2.0, 2.0 + COVER, 0) is Verdict.DYING  # a slow answer: starts over
    assert p.reading(2.6, 2.61, 0, granted=1) is Verdict.ALIVE  # TTL 1: nothing to prove
    assert p.reading(3.0, 3.01, -1) is Verdict.GONE


@given(
    st.integers(1, 5),  # the lease's TTL
    st.lists(st.floats(0.01, 0.999), max_size=20),  # gaps between refreshes, as fractions of TTL
    st.lists(st.tuples(st.floats(0.001, 0.6), st.floats(0, 0.05)), min_size=1, max_size=120),
)
def test_expired_is_never_said_of_a_lease_with_time_left(
    ttl: int, refresh_gaps: list[float], polls: list[tuple[float, float]]
) -> None:
    """Whatever the refreshes, poll cadence and latencies: EXPIRED only once the lease's end
    has passed (and etcd refuses refreshes after it, so that end is final)."""
    refreshes = [0.0]
    for gap in refresh_gaps:
        refreshes.append(refreshes[-1] + gap * ttl)  # each lands before the lease ran out

    def remaining(at: float) -> float:
        return max(r for r in refreshes if r <= at) + ttl - at

    p = ExpiryProof()
    now = 0.0
    for gap, latency in polls:
        now += gap
        evaluated = now + latency / 2
        left = remaining(evaluated)
        reading = int(left) if left > 0 else 0  # etcd truncates toward zero
        if p.reading(now, now + latency, reading, ttl) is Verdict.EXPIRED:
            assert evaluated >= refreshes[-1] + ttl
            return
        now += latency
