"""Per-client-address limits: connections open at once and new connections per second
(pure: no I/O, no clock; the caller passes `now`).

nginx's `limit_conn` and `limit_req` keyed on the client address, as the
proxy sees it after PROXY protocol. Open connections are always counted (a
WebSocket stays counted for its whole life); a refusal is counted by kind for
`/metrics`. The rate is a token bucket per address; buckets that are full
again are forgotten once there are many, so the table stays bounded by the
addresses active within about a burst's refill time.
"""

from __future__ import annotations

from haproxy_py.proxy.config import Limits

# Above this many buckets, full ones are dropped on the next refusal-free admit.
_PRUNE_AT = 65536
TOO_MANY_OPEN = "connections"
TOO_FAST = "rate"


class IpLimiter:
    def __init__(self) -> None:
        self.open: dict[str, int] = {}
        self.buckets: dict[str, tuple[float, float]] = {}  # address -> (tokens, at)
        self.refused = {TOO_MANY_OPEN: 0, TOO_FAST: 0}

    def admit(self, address: str, now: float, limits: Limits) -> str | None:
        """Count a new connection from `address`, or say which limit refuses it."""
        count = self.open.get(address, 0)
        if 0 < limits.per_ip_connections <= count:
            self.refused[TOO_MANY_OPEN] += 1
            return TOO_MANY_OPEN
        rate = limits.per_ip_rate
        if rate > 0:
            burst = float(limits.per_ip_burst or max(1, round(rate + 0.499)))
            tokens, at = self.buckets.get(address, (burst, now))
            tokens = min(burst, tokens + (now - at) * rate)
            if tokens < 1.0:
                self.buckets[address] = (tokens, now)
                self.refused[TOO_FAST] += 1
                return TOO_FAST
            self.buckets[address] = (tokens - 1.0, now)
            if len(self.buckets) > _PRUNE_AT:
                self._prune(now, rate, burst)
        self.open[address] = count + 1
        return None

    def release(self, address: str) -> None:
        count = self.open.get(address, 0) - 1
        if count > 0:
            self.open[address] = count
        else:
            self.open.pop(address, None)

    def _prune(self, now: float, rate: float, burst: float) -> None:
        self.buckets = {
            address: (tokens, at)
            for address, (tokens, at) in self.buckets.items()
            if tokens + (now - at) * rate < burst
        }
