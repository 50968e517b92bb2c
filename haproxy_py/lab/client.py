"""Clients inside the lab's client namespace: an asyncio loop there, a failover probe, WebSockets.

`NetnsLoop` runs an asyncio loop in a thread that has entered a namespace, so
every connection it opens comes from that namespace (as a real client's
would), while the caller keeps its own namespace. The tests and the demo tour
drive clients through it.

`Probe` opens a new TCP connection to a VIP every few milliseconds and asks
`GET /whoami`, recording which node answered (the `Via` header); `outage`
turns that record into the gap a client saw around a fault.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import math
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

from haproxy_py.lab.netns import thread_in_netns

T = TypeVar("T")


class NetnsLoop:
    """An asyncio event loop running in a background thread inside `netns`."""

    def __init__(self, netns: str) -> None:
        self.loop = asyncio.new_event_loop()
        started = concurrent.futures.Future[None]()

        def run() -> None:
            asyncio.set_event_loop(self.loop)
            self.loop.call_soon(started.set_result, None)
            self.loop.run_forever()

        self.thread = thread_in_netns(netns, run, name=f"loop-{netns}")
        started.result(timeout=10)

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = 60) -> T:
        """Run `coro` on the namespace's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def close(self) -> None:
        async def cancel_all() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        if self.loop.is_running():
            self.run(cancel_all(), timeout=10)
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
        self.loop.close()

    def __enter__(self) -> NetnsLoop:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass(frozen=True)
class Attempt:
    start: float  # time.monotonic() when the connection was opened
    end: float
    node: str | None  # the `Via` node, None when the attempt failed


async def whoami(host: str, port: int, within: float) -> str | None:
    """The node in `Via` of a fresh `GET /whoami`, or None if anything fails in time."""
    writer = None
    try:
        async with asyncio.timeout(within):
            reader, writer = await asyncio.open_connection(host, port)
            request = f"GET /whoami HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
            writer.write(request.encode())
            head = await reader.readuntil(b"\r\n\r\n")
    except (OSError, TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
        return None
    finally:
        if writer is not None:
            writer.close()
    lines = head.decode("latin-1").split("\r\n")
    if not lines[0].startswith("HTTP/1.1 200"):
        return None
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "via":
            return value.split()[-1]
    return None


@dataclass
class Probe:
    """New connections to `host:port` every `interval` s; at most `limit` seconds in all."""

    host: str
    port: int
    interval: float = 0.01
    timeout: float = 1.0
    limit: float = 300.0
    attempts: list[Attempt] = field(default_factory=list)
    _stop: asyncio.Event | None = None

    async def run(self) -> list[Attempt]:
        self._stop = asyncio.Event()
        deadline = time.monotonic() + self.limit
        pending: set[asyncio.Task[None]] = set()
        # Each attempt ends within `timeout`, which bounds the sockets a black-holed VIP
        # piles up; a lower cap would pause the probe and hide when the VIP came back.
        most = math.ceil(self.timeout / self.interval) + 1
        while not self._stop.is_set() and time.monotonic() < deadline:
            if len(pending) < most:
                task = asyncio.create_task(self._one())
                pending.add(task)
                task.add_done_callback(pending.discard)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self.interval)
        if pending:
            await asyncio.wait(pending, timeout=self.timeout + 1)
        return self.attempts

    async def _one(self) -> None:
        start = time.monotonic()
        node = await whoami(self.host, self.port, self.timeout)
        self.attempts.append(Attempt(start, time.monotonic(), node))

    def stop(self) -> None:
        if self._stop is not None:
            self._stop.set()


@dataclass(frozen=True)
class Outage:
    """What a client saw around a fault at `fault` (monotonic seconds)."""

    gap: float | None  # last answer before the new node's first one -> that first answer
    new_node: str | None
    first_new: float | None  # seconds after the fault
    failed: int  # failed attempts after the fault


def outage(attempts: list[Attempt], fault: float, old_node: str | None) -> Outage:
    """The client-visible gap: from the last answer before the first answer by another node
    (or from the fault, if that was later) to that first answer, by attempt start times."""
    ordered = sorted(attempts, key=lambda a: a.start)
    first = next(
        (a for a in ordered if a.start >= fault and a.node and a.node != old_node),
        None,
    )
    failed = sum(1 for a in ordered if a.start >= fault and a.node is None)
    if first is None:
        return Outage(None, None, None, failed)
    before = [a for a in ordered if a.node and a.start < first.start]
    last_ok = max((a.start for a in before), default=fault)
    return Outage(
        gap=first.start - max(last_ok, fault),
        new_node=first.node,
        first_new=first.start - fault,
        failed=failed,
    )


def longest_outage(attempts: list[Attempt], since: float) -> float:
    """The longest stretch after `since` from the last answered attempt before a run of
    failures to the next answered one (0.0 when nothing failed)."""
    longest, last_ok, failing = 0.0, since, False
    for a in sorted(attempts, key=lambda a: a.start):
        if a.start < since:
            continue
        if a.node is None:
            failing = True
        else:
            if failing:
                longest = max(longest, a.start - last_ok)
            last_ok, failing = a.start, False
    return longest
