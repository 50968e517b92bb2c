"""Proxy-made answers: 502 when no server can be reached, 504 when one does not answer."""

from __future__ import annotations

import socket

from tests.integration.proxy.support import config_from_text, raw_exchange, url


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_502_when_every_connect_fails(proxy) -> None:
    server = await proxy(
        config_from_text(
            f'servers = ["127.0.0.1:{closed_port()}", "127.0.0.1:{closed_port()}"]\n'
            "health = { fall = 10 }"
        )
    )
    raw = await raw_exchange(server, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    head, body = raw.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 502 Bad Gateway")
    assert b"Content-Type: text/plain" in head and b"Connection: close" in head
    assert body == b"bad gateway\n"  # no backend name or address for the client
    assert b"Traceback" not in raw


async def test_504_when_backend_is_too_slow(backends, proxy) -> None:
    (b,) = await backends(1)
    server = await proxy(
        config_from_text(
            f'servers = ["{b.address}"]', extra="[proxy.timeouts]\nupstream_header = 0.3\n"
        )
    )
    raw = await raw_exchange(server, b"GET /slow?delay=10 HTTP/1.1\r\nHost: x\r\n\r\n")
    assert raw.startswith(b"HTTP/1.1 504 Gateway Timeout")
    assert raw.endswith(b"\r\n\r\nthe backend did not answer in time\n")
    assert server.runtime.backends["app"].servers[0].load() == 0


async def test_stale_pooled_connection_is_retried(backends, proxy, session) -> None:
    """A backend restart kills pooled connections; the next GET still succeeds."""
    (b,) = await backends(1)
    server = await proxy(config_from_text(f'servers = ["{b.address}"]'))
    async with session.get(url(server, "/one")) as response:
        assert response.status == 200
    port = b.port
    await b.stop()
    await b.start(port)
    async with session.get(url(server, "/two")) as response:
        assert response.status == 200
        assert (await response.json())["path"] == "/two"


async def test_backend_garbage_is_502(proxy) -> None:
    """A backend that answers with something that is not HTTP gives a 502."""
    import asyncio

    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"SSH-2.0-OpenSSH\r\n\r\n")
        await writer.drain()
        writer.close()

    bad = await asyncio.start_server(garbage, "127.0.0.1", 0)
    try:
        port = bad.sockets[0].getsockname()[1]
        server = await proxy(config_from_text(f'servers = ["127.0.0.1:{port}"]'))
        raw = await raw_exchange(server, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert raw.startswith(b"HTTP/1.1 502 ")
        assert raw.endswith(b"\r\n\r\nbad gateway\n")
    finally:
        bad.close()
        await bad.wait_closed()
