"""Raw-socket helpers: open, read to the end, check that nothing leaks."""

from __future__ import annotations

import asyncio

from haproxy_py.proxy.server import ProxyServer
from tests.support.wait import eventually_async


async def no_leak(server: ProxyServer) -> None:
    """Every client connection the test made is gone from the proxy's books."""
    await eventually_async(
        lambda: (
            all(lst.active == 0 and not lst.connections for lst in server.listeners)
            and not server.tunnels.open
        ),
        30,
        "all connections closed",
    )


async def open_raw(server: ProxyServer) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    host, port = server.address("web")
    return await asyncio.open_connection(host, port)


async def read_all(reader: asyncio.StreamReader) -> bytes:
    async with asyncio.timeout(30):
        return await reader.read(-1)


def status_of(response: bytes) -> int:
    assert response.startswith(b"HTTP/1.1 "), response[:80]
    return int(response[9:12])
