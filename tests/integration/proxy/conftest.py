"""Fixtures: real backends and an in-process proxy; async tests run on asyncio and uvloop."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping

import aiohttp
import pytest
import uvloop

from haproxy_py.proxy.config import ProxyConfig
from haproxy_py.proxy.server import ProxyServer
from tests.integration.proxy.support import Backend


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> Mapping[str, Callable[[], asyncio.AbstractEventLoop]]:
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
async def _proxy() -> AsyncIterator[Callable[[ProxyConfig], Awaitable[ProxyServer]]]:
    started: list[ProxyServer] = []

    async def start(config: ProxyConfig) -> ProxyServer:
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
