"""Per-address limits: open connections and a token bucket per address."""

from __future__ import annotations

from haproxy_py.proxy.config import Limits
from haproxy_py.proxy.iplimits import TOO_FAST, TOO_MANY_OPEN, IpLimiter


def test_open_connections_are_counted_per_address() -> None:
    limiter, limits = IpLimiter(), Limits(per_ip_connections=2)
    assert limiter.admit("a", 0.0, limits) is None
    assert limiter.admit("a", 0.0, limits) is None
    assert limiter.admit("a", 0.0, limits) == TOO_MANY_OPEN
    assert limiter.admit("b", 0.0, limits) is None  # another address has its own count
    limiter.release("a")
    assert limiter.admit("a", 0.0, limits) is None
    assert limiter.refused == {TOO_MANY_OPEN: 1, TOO_FAST: 0}


def test_no_limits_only_count() -> None:
    limiter = IpLimiter()
    for _ in range(1000):
        assert limiter.admit("a", 0.0, Limits()) is None
    assert limiter.open == {"a": 1000} and limiter.buckets == {}
    for _ in range(1000):
        limiter.release("a")
    assert limiter.open == {}


def test_rate_is_a_token_bucket() -> None:
    limiter, limits = IpLimiter(), Limits(per_ip_rate=2.0, per_ip_burst=3)
    assert [limiter.admit("a", 0.0, limits) for _ in range(4)] == [None, None, None, TOO_FAST]
    assert limiter.admit("a", 0.4, limits) == TOO_FAST  # 0.8 of a token back
    assert limiter.admit("a", 0.5, limits) is None  # one whole token after 0.5 s
    assert limiter.admit("a", 10.0, limits) is None  # refilled, but never above the burst
    assert limiter.buckets["a"][0] == 2.0


def test_burst_defaults_to_the_rate_rounded_up() -> None:
    limiter, limits = IpLimiter(), Limits(per_ip_rate=1.5)
    assert [limiter.admit("a", 0.0, limits) for _ in range(3)] == [None, None, TOO_FAST]
