"""CPU per access log line, at a paced rate: the buffered writer against a structlog line.

`python -m bench.accesslog [--rate 4000] [--seconds 3] [--out FILE]` emits HTTP
access lines at `rate` per second on an event loop (in batches each
millisecond, as a busy proxy would) and reports the process CPU time (all
threads: the writer thread counts) per line, minus the same paced loop
without logging. `structlog` is the per-request JSON line with a flushing
write that the proxy wrote before (`haproxy_py.logging.configure`).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from collections.abc import Callable

import structlog

from haproxy_py.logging import configure
from haproxy_py.proxy.accesslog import AccessLog, write_fd


async def paced(rate: int, seconds: float, emit: Callable[[int], None]) -> tuple[float, int]:
    """CPU seconds (process: every thread) spent while emitting `rate` lines a second."""
    per_ms = rate / 1000
    start_cpu, start = time.process_time(), time.monotonic()
    sent = 0
    while (elapsed := time.monotonic() - start) < seconds:
        due = int(elapsed * 1000 * per_ms)
        while sent < due:
            emit(sent)
            sent += 1
        await asyncio.sleep(0.001)
    return time.process_time() - start_cpu, sent


def http_line(log: AccessLog) -> Callable[[int], None]:
    def emit(i: int) -> None:
        path = f"/item/{i}"
        log.http("GET", path, 200, "app", "127.0.0.1:8080", 0.42, 0, 512, "198.18.0.7", None)

    return emit


def structlog_line(i: int) -> None:
    structlog.get_logger("haproxy_py.proxy.access").info(
        "http",
        method="GET",
        path=f"/item/{i}",
        status=200,
        backend="app",
        server="127.0.0.1:8080",
        duration_ms=0.42,
        bytes_in=0,
        bytes_out=512,
        client="198.18.0.7",
    )


async def measure(rate: int, seconds: float, fd: int) -> dict[str, float]:
    idle_cpu, _ = await paced(rate, seconds, lambda i: None)
    log = AccessLog(write_fd(fd))
    buffered_cpu, lines = await paced(rate, seconds, http_line(log))
    log.flush()
    await asyncio.to_thread(log.close)
    structlog_cpu, slines = await paced(rate, seconds, structlog_line)
    return {
        "buffered_us": (buffered_cpu - idle_cpu) / lines * 1e6,
        "structlog_us": (structlog_cpu - idle_cpu) / slines * 1e6,
        "lines": lines,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=int, default=4000)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--out", default=os.devnull, help="where the lines go (a file or a pipe)")
    args = parser.parse_args()
    fd = os.open(args.out, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    saved = os.dup(2)
    os.dup2(fd, 2)  # structlog writes to stderr: the same destination for both
    try:
        configure("info", json=True)
        result = asyncio.run(measure(args.rate, args.seconds, 2))
    finally:
        os.dup2(saved, 2)
    print(
        f"access log at {args.rate} lines/s to {args.out}: "
        f"buffered {result['buffered_us']:.2f} µs/line, "
        f"structlog {result['structlog_us']:.2f} µs/line ({int(result['lines'])} lines)",
        file=sys.stdout,
    )


if __name__ == "__main__":
    main()
