"""Random bytes at the listeners (bounded): the node keeps answering /healthz and leaks nothing."""

from __future__ import annotations

import asyncio
import base64
import contextlib

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from haproxy_py.proxy.server import ProxyServer
from tests.integration.proxy.raw import no_leak
from tests.integration.proxy.support import proxy_config

KEY = base64.b64encode(b"f" * 16)
PREFIXES = [
    b"",
    b"GET / HTTP/1.1\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\n",
    b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n",
    b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
    b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: " + KEY + b"\r\n\r\n",
    b"PROXY TCP4 ",
    b"\r\n\r\n\x00\r\nQUIT\n",
]
LB = '\n[[listeners]]\nname = "lb"\nbind = "127.0.0.1:0"\nproxy_protocol = true\n'
LB += 'trusted_proxies = ["127.0.0.0/8"]\n'
SETTINGS = "\n[proxy.timeouts]\nclient_header = 2\nhttp_idle = 2\nwebsocket_idle = 2\n"


async def health(server: ProxyServer) -> bytes:
    reader, writer = await asyncio.open_connection(*server.admin.address)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n")
    async with asyncio.timeout(30):
        answer = await reader.read(-1)
    writer.close()
    return answer


async def test_random_bytes_never_hurt_the_node(backends, proxy) -> None:
    (b,) = await backends(1)
    server = await proxy(proxy_config({"app": [b.address]}, LB + SETTINGS))
    sent = 0

    @settings(
        max_examples=120,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
        database=None,
    )
    @given(
        listener=st.sampled_from(["web", "lb"]),
        prefix=st.sampled_from(PREFIXES),
        chunks=st.lists(st.binary(min_size=1, max_size=600), min_size=1, max_size=4),
    )
    def one_connection(listener: str, prefix: bytes, chunks: list[bytes]) -> None:
        nonlocal sent
        sent += 1
        pending.append((listener, prefix, chunks))

    pending: list[tuple[str, bytes, list[bytes]]] = []
    one_connection()  # hypothesis draws the cases; they run below on the proxy's event loop
    assert 0 < len(pending) == sent <= 120
    for listener, prefix, chunks in pending:
        reader, writer = await asyncio.open_connection(*server.address(listener))
        # The proxy may have closed first: a reset (ConnectionError) or, on the half-close,
        # ENOTCONN (a plain OSError).
        with contextlib.suppress(OSError):
            for chunk in (prefix + chunks[0], *chunks[1:]):
                writer.write(chunk)
                await writer.drain()
            writer.write_eof()
        with contextlib.suppress(ConnectionError):
            async with asyncio.timeout(30):
                await reader.read(-1)  # the proxy answers and closes, or just closes
        writer.close()
        answer = await health(server)
        assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
    await no_leak(server)
    assert not server.runtime.backends["app"].servers[0].load()
