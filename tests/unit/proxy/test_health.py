"""The pure health tracker: fall, rise, passive failures and the passive retry timer."""

from __future__ import annotations

from haproxy_py.proxy.balancer import Server
from haproxy_py.proxy.config import HealthConfig, ServerConfig
from haproxy_py.proxy.health import Tracker


def tracker(**kw: object) -> Tracker:
    return Tracker(Server(ServerConfig("127.0.0.1", 9001)), HealthConfig(**kw))  # type: ignore[arg-type]


class TestTracker:
    def test_falls_after_fall_failures(self) -> None:
        """`fall` consecutive failures take the server down, not fewer."""
        t = tracker(path="/h", fall=3)
        assert not t.record(False, 1.0) and not t.record(False, 2.0)
        assert t.server.up
        assert t.record(False, 3.0, "boom")
        assert not t.server.up and t.last_error == "boom"

    def test_success_resets_failures(self) -> None:
        t = tracker(path="/h", fall=2)
        t.record(False, 1.0)
        t.record(True, 2.0)
        assert not t.record(False, 3.0)
        assert t.server.up

    def test_rises_after_rise_successes(self) -> None:
        """A down server needs `rise` consecutive good checks to come back."""
        t = tracker(path="/h", fall=1, rise=2)
        t.record(False, 1.0)
        assert not t.record(True, 2.0)
        assert not t.server.up
        assert t.record(True, 3.0)
        assert t.server.up

    def test_passive_failures_count_toward_fall(self) -> None:
        t = tracker(fall=2)
        assert not t.passive_failure(1.0, "connect failed")
        assert t.passive_failure(1.1, "connect failed")
        assert not t.server.up

    def test_passive_disabled(self) -> None:
        t = tracker(fall=1, passive=False)
        assert not t.passive_failure(1.0, "x")
        assert t.server.up

    def test_revive_after_retry_time(self) -> None:
        """Without active checks a passively failed server is retried after retry_down_after."""
        t = tracker(fall=1, retry_down_after=10.0)
        t.passive_failure(100.0, "x")
        assert not t.revive_due(105.0)
        assert t.revive_due(110.0)
        assert t.server.up
