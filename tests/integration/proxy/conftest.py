"""Fixtures: real backends and an in-process proxy; async tests run on asyncio and uvloop.

`HAPROXY_PY_TEST_WORKERS=2` runs the same tests against a master with two worker
processes (`proxy.master.Master`) instead of the one-process `ProxyServer`;
tests that look inside the one process (its tunnels, listeners, counters) are
marked `single_process` and left out of that run (`-m "not single_process"`).
The tests then run on asyncio only: the workers run uvloop whatever the test's loop.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

import aiohttp
import pytest
import uvloop

from haproxy_py.cluster.config import LoggingConfig
from haproxy_py.proxy.config import ProxyConfig
from haproxy_py.proxy.master import Master
from haproxy_py.proxy.server import ProxyServer
from tests.integration.proxy.support import Backend

WORKERS = int(os.environ.get("HAPROXY_PY_TEST_WORKERS", "0"))  # 0: one process, in-process


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> Mapping[str, Callable[[], asyncio.AbstractEventLoop]]:
    if WORKERS:
        return {"asyncio": asyncio.new_event_loop}
    return {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}


@pytest.fixture(name="backends")
async def _backends() -> AsyncIterator[Callable[[int], Awaitable[list[Backend]]]]:
    started: list[Backend] = []

    async def start(n: int) -> list[Backend]:
        new = [Backend(f"b{len(started) + i}") for i in range(n)]
        for backend in new:
            await backend.start()
        started.extend(new)
        return new

    yield start
    for backend in started:
        await backend.stop()


@pytest.fixture(name="proxy")
async def _proxy() -> AsyncIterator[Callable[[ProxyConfig], Awaitable[Any]]]:
    """Start a proxy for a config: a `ProxyServer`, or a `Master` (HAPROXY_PY_TEST_WORKERS)."""
    started: list[ProxyServer | Master] = []

    async def start(config: ProxyConfig) -> ProxyServer | Master:
        server: ProxyServer | Master
        if WORKERS:
            server = Master(config, "node-test", WORKERS, LoggingConfig("warning", "auto"))
        else:
            server = ProxyServer(config, node_name="node-test")
        await server.start()
        started.append(server)
        return server

    yield start
    for server in started:
        await server.stop()


@pytest.fixture(name="session")
async def _session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        yield session
