"""The access log: JSON lines like structlog's, buffered, written by a thread that may lag."""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
from collections.abc import Iterator

import pytest
import structlog

from haproxy_py.logging import configure
from haproxy_py.proxy import accesslog
from haproxy_py.proxy.accesslog import PIPE_BUF, AccessLog, CachedClock, two_decimals, write_fd


@pytest.fixture(autouse=True)
def default_logging() -> Iterator[None]:
    """structlog's defaults (info lines on): another test's `configure()` must not turn the
    log off here."""
    structlog.reset_defaults()
    yield
    structlog.reset_defaults()


def lines_of(chunks: list[bytes]) -> list[dict[str, object]]:
    return [json.loads(line) for line in b"".join(chunks).splitlines()]


def http(log: AccessLog, path: str = "/x", error: str | None = None) -> None:
    log.http("GET", path, 200, "app", "127.0.0.1:8080", 1.25, 10, 20, "198.18.0.7", error)


async def test_lines_have_the_structlog_keys_and_escape_what_they_carry() -> None:
    written: list[bytes] = []
    log = AccessLog(written.append, clock=CachedClock(lambda: 1796288074.5678))
    weird = '/a"b\\c\x01\xe9\n'
    http(log, weird, error="connect failed")
    log.http("POST", "/", 502, "-", None, 0.0, 0, 0, "-", None)
    log.websocket("app", "127.0.0.1:8080", "::1", 12.5, 3, 4, 1001, "proxy")
    log.websocket("app", "127.0.0.1:8080", "::1", 1.0, 0, 0, None, None)
    assert log.sync()
    first, second, ws, ws_bare = lines_of(written)
    assert first == {
        "method": "GET",
        "path": weird,
        "status": 200,
        "backend": "app",
        "server": "127.0.0.1:8080",
        "duration_ms": 1.25,
        "bytes_in": 10,
        "bytes_out": 20,
        "client": "198.18.0.7",
        "error": "connect failed",
        "event": "http",
        "level": "info",
        "timestamp": "2026-12-03T08:54:34.567Z",
    }
    assert second["server"] is None and "error" not in second
    assert (ws["event"], ws["close_code"], ws["closed_by"]) == ("websocket", 1001, "proxy")
    assert (ws_bare["close_code"], ws_bare["closed_by"]) == (None, None)
    assert all(line.isascii() for line in b"".join(written).decode().splitlines())
    log.close()


def test_durations_are_rounded_to_the_nearest_hundredth() -> None:
    values = [0.0, 0.004, 0.006, 0.125, 1.239, 12.345, 99.999, 86_400_000.0]
    for value in values + [i * 0.37 + i / 7 for i in range(5000)]:
        text = two_decimals(value)
        assert len(text.partition(".")[2]) == 2
        assert abs(float(text) - value) <= 0.005 + 1e-6
    assert [two_decimals(v) for v in (0.004, 0.125, 99.999)] == ["0.00", "0.13", "100.00"]


def test_the_clock_formats_the_second_once_and_keeps_milliseconds() -> None:
    now = [100.25]
    clock = CachedClock(lambda: now[0])
    assert clock.stamp() == "1970-01-01T00:01:40.250Z"
    now[0] = 100.75
    assert clock.stamp() == "1970-01-01T00:01:40.750Z"
    now[0] = 101.0
    assert clock.stamp() == "1970-01-01T00:01:41.000Z"


async def test_lines_wait_for_the_buffer_or_the_flush_interval() -> None:
    written: list[bytes] = []
    log = AccessLog(written.append, buffer=1000, flush_after=0.2)
    http(log)
    await asyncio.sleep(0.05)
    assert written == []  # buffered: no write per request
    for _ in range(10):  # a line is ~240 bytes: each 1000 are handed over at once
        http(log)
    assert log.written(5.0)
    assert 4 <= len(lines_of(written)) < 11
    await asyncio.sleep(0.3)  # the interval's timer (0.2 s) fires before this sleep ends
    assert log.written(5.0)
    assert len(lines_of(written)) == 11
    log.close()


async def test_a_stuck_writer_never_blocks_the_loop_and_drops_are_counted() -> None:
    release = threading.Event()
    written: list[bytes] = []

    def stuck(data: bytes) -> None:
        release.wait(30)
        written.append(data)

    log = AccessLog(stuck, buffer=4096, max_pending=64 * 1024)
    started = time.monotonic()
    total = 5000
    for i in range(total):
        http(log, f"/{i}")
    log.flush()
    assert time.monotonic() - started < 10  # generous: it never waits for the writer
    assert log.dropped > 0
    release.set()
    assert log.written(30)
    assert len(lines_of(written)) + log.dropped == total
    log.close()


async def test_a_failing_sink_counts_its_lines_as_dropped() -> None:
    def broken(data: bytes) -> None:
        raise BrokenPipeError

    log = AccessLog(broken)
    http(log)
    http(log)
    assert log.sync()
    assert log.dropped == 2
    log.close()


def test_writes_to_a_fd_are_whole_lines_of_at_most_pipe_buf(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    read_end, write_end = os.pipe()
    sizes: list[int] = []
    real_write = os.write

    def recording(fd: int, data: bytes | memoryview) -> int:
        sizes.append(len(data))
        return real_write(fd, data)

    monkeypatch.setattr(accesslog.os, "write", recording)
    lines = b"".join(b'{"n": %d, "pad": "%s"}\n' % (i, b"x" * (i % 300)) for i in range(100))
    try:
        threading.Thread(target=write_fd(write_end), args=(lines,)).start()
        got = b""
        while len(got) < len(lines):
            got += os.read(read_end, 65536)
    finally:
        os.close(read_end)
        os.close(write_end)
    assert got == lines
    assert len(sizes) > 1 and max(sizes) <= PIPE_BUF
    offsets = [sum(sizes[:i]) for i in range(1, len(sizes))]
    assert all(lines[at - 1 : at] == b"\n" for at in offsets)  # every cut after a newline


@pytest.fixture
def warning_level() -> Iterator[None]:
    configure("warning", json=True)
    try:
        yield
    finally:
        structlog.reset_defaults()


def test_off_when_the_log_level_hides_info(warning_level: None) -> None:
    written: list[bytes] = []
    log = AccessLog(written.append)
    assert not log.enabled
    http(log)
    assert log.sync() and written == []
