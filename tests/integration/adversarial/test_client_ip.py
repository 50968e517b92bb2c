"""Client-IP headers: what the backend is told about the client, and what it is never told."""

from __future__ import annotations

import asyncio

from haproxy_py.proxy import proxyproto
from tests.integration.adversarial.client import config, exchange, statuses

SPOOF = (
    b"GET /who HTTP/1.1\r\nHost: a\r\nConnection: close\r\n"
    b"X-Forwarded-For: 6.6.6.6\r\nX-Real-IP: 7.7.7.7\r\nForwarded: for=8.8.8.8\r\n"
    b"X-Forwarded_For: 9.9.9.9\r\nTransfer_Encoding: chunked\r\nContent_Length: 5\r\n\r\n"
)


async def test_edge_sets_client_ip_headers_and_drops_spoofed_ones(recorder, proxy) -> None:
    """Must hold 9 and 11 (underscores): the backend learns the peer, nothing the client chose."""
    backend = await recorder()
    server = await proxy(config(backend.address))
    assert statuses(await exchange(server, SPOOF)) == [200]
    (seen,) = backend.seen
    assert seen.header("X-Forwarded-For") == ["127.0.0.1"]
    assert seen.header("X-Real-IP") == ["127.0.0.1"]
    assert seen.header("Forwarded") == []
    assert seen.header("Via") == ["1.1 node-test"]
    assert not any("_" in name for name, _ in seen.headers)


async def test_client_ip_comes_from_a_trusted_proxy_header(recorder, proxy) -> None:
    backend = await recorder()
    lb = (
        '[[listeners]]\nname = "lb"\nbind = "127.0.0.1:0"\nproxy_protocol = true\n'
        'trusted_proxies = ["127.0.0.0/8"]\nforwarded_for_trusted = ["198.18.0.0/15"]\n'
    )
    cfg = config(backend.address, routes=lb)
    server = await proxy(cfg)
    header = proxyproto.encode_v1(("198.18.0.7", 5555), ("198.18.0.1", 80))
    reader, writer = await asyncio.open_connection(*server.address("lb"))
    writer.write(header + SPOOF)
    async with asyncio.timeout(30):
        await reader.read(-1)
    writer.close()
    (seen,) = backend.seen
    assert seen.header("X-Real-IP") == ["198.18.0.7"]
    # The address the PROXY header gave is a trusted proxy: its list is kept, and appended to.
    assert seen.header("X-Forwarded-For") == ["6.6.6.6, 198.18.0.7"]
