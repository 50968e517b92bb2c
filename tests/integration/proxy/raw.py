"""Raw-socket helpers: open, read to the end, check that nothing leaks."""

from __future__ import annotations

import asyncio

from haproxy_py.proxy.master import Master
from haproxy_py.proxy.server import ProxyServer
from tests.support.wait import eventually_async


async def no_leak(server: ProxyServer | Master) -> None:
    """Every client connection the test made is gone from the proxy's books (with worker
    processes: from every worker's report)."""
    if isinstance(server, Master):
        await eventually_async(lambda: all_closed(server), 30, "all connections closed")
        return
    await eventually_async(
        lambda: (
            all(lst.active == 0 and not lst.connections for lst in server.listeners)
            and not server.tunnels.open
        ),
        30,
        "all connections closed",
    )


async def all_closed(server: Master) -> bool:
    report = await server.traffic()
    return report.websockets_open == 0 and not any(n for _, n in report.listener_connections)


async def open_raw(
    server: ProxyServer | Master,
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    host, port = server.address("web")
    return await asyncio.open_connection(host, port)


async def read_all(reader: asyncio.StreamReader) -> bytes:
    async with asyncio.timeout(30):
        return await reader.read(-1)


def status_of(response: bytes) -> int:
    assert response.startswith(b"HTTP/1.1 "), response[:80]
    return int(response[9:12])


async def keep_alive_exchange(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, path: str
) -> int:
    """One HTTP/1.1 request on an open connection, left open; returns the status."""
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    async with asyncio.timeout(30):
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(
            int(line.split(b":", 1)[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
        await reader.readexactly(length)
    return int(head[9:12])
