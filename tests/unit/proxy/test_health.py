"""The pure health tracker: fall, rise, passive failures and the passive retry timer; and
the checker's tasks outliving a failure."""

from __future__ import annotations

import asyncio
import time

from haproxy_py.proxy.balancer import Server
from haproxy_py.proxy.config import HealthConfig, ServerConfig
from haproxy_py.proxy.health import Checker, Tracker


def tracker(**kw: object) -> Tracker:
    return Tracker(Server(ServerConfig("127.0.0.1", 9001)), HealthConfig(**kw))


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


async def test_a_health_task_that_fails_unexpectedly_is_started_again() -> None:
    """A bug in a check or revive callback must not leave the proxy without health checks."""
    t = tracker(fall=1, retry_down_after=0.05)
    t.record(False, time.monotonic() - 1.0)
    calls: list[str] = []
    twice = asyncio.Event()

    def on_change(changed: Tracker, why: str) -> None:
        calls.append(why)
        changed.record(False, time.monotonic() - 1.0)  # down again: due at the next step
        if len(calls) == 2:
            twice.set()
        if len(calls) == 1:
            raise RuntimeError("a bug in the callback")

    checker = Checker("app", [t], t.config, on_change)
    checker.start()
    try:
        async with asyncio.timeout(5):
            await twice.wait()
    finally:
        await checker.stop()
    assert calls[:2] == ["retrying after passive failures"] * 2
