"""The notify protocol against a real AF_UNIX datagram socket standing in for systemd."""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from haproxy_py import systemd


class FakeSystemd:
    """A bound datagram socket, as systemd's $NOTIFY_SOCKET; records (time, message)."""

    def __init__(self, address: str, bind_to: str) -> None:
        self.address = address
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(bind_to)
        self.sock.setblocking(False)
        self.received: list[tuple[float, str]] = []

    def drain(self) -> list[str]:
        while True:
            try:
                data = self.sock.recv(4096)
            except BlockingIOError:
                return [message for _, message in self.received]
            self.received.append((time.monotonic(), data.decode()))


@pytest.fixture
def fake(tmp_path: Path) -> Iterator[FakeSystemd]:
    path = str(tmp_path / "notify")
    sd = FakeSystemd(path, path)
    yield sd
    sd.sock.close()


def test_outside_systemd_nothing_is_sent_and_nothing_runs() -> None:
    assert systemd.notify("READY=1", {}) is False
    assert systemd.watchdog_interval({}) is None
    assert systemd.watchdog_interval({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "1"}) is None
    assert systemd.watchdog_interval({"WATCHDOG_USEC": "2000000"}) == 2.0


def test_abstract_namespace_address() -> None:
    name = f"haproxy-py-test-{os.getpid()}"
    sd = FakeSystemd("@" + name, "\0" + name)
    try:
        assert systemd.notify("STATUS=hello", {"NOTIFY_SOCKET": "@" + name})
        assert sd.drain() == ["STATUS=hello"]
    finally:
        sd.sock.close()


async def test_ready_only_once_ready_and_the_watchdog_fed_from_the_loop(
    fake: FakeSystemd,
) -> None:
    env = {"NOTIFY_SOCKET": fake.address, "WATCHDOG_USEC": "200000"}  # 0.2 s: fed every 0.1 s
    ready = False
    task = asyncio.create_task(systemd.supervise(lambda: ready, env))
    try:
        await asyncio.sleep(0.35)
        before = fake.drain()
        assert "READY=1" not in before
        assert before.count("WATCHDOG=1") >= 2  # fed while starting too
        ready = True
        await asyncio.sleep(0.2)
        assert fake.drain().count("READY=1") == 1
        # A hung loop stops feeding: nothing is sent while it is blocked, feeding resumes after.
        fake.drain()
        seen = len(fake.received)
        hang(0.5)
        assert len(fake.drain()) == seen
        await asyncio.sleep(0.25)
        assert "WATCHDOG=1" in fake.drain()[seen:]
    finally:
        task.cancel()
    assert [m for _, m in fake.received].count("READY=1") == 1


def hang(seconds: float) -> None:
    """Block the calling thread (the event loop, when called from a coroutine)."""
    time.sleep(seconds)


async def test_without_watchdog_ready_is_sent_and_the_task_ends(fake: FakeSystemd) -> None:
    await asyncio.wait_for(systemd.supervise(lambda: True, {"NOTIFY_SOCKET": fake.address}), 5)
    assert fake.drain() == ["READY=1"]
