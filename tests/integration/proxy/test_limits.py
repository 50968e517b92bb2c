"""Limits and hostile input: each case gets its status or a clean close, a log line, no leak."""

from __future__ import annotations

import asyncio
import base64
import contextlib
from collections.abc import AsyncIterator

import aiohttp
import pytest

from tests.integration.proxy.raw import no_leak, open_raw, read_all, status_of
from tests.integration.proxy.support import (
    access_lines,
    config_from_text,
    proxy_config,
    raw_exchange,
    url,
)
from tests.support.wait import eventually_async

KEY = base64.b64encode(b"k" * 16)


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GARBAGE\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost x\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\n\r\n",
        b"GET / HTTP/9.9\r\nHost: x\r\n\r\n",
    ],
    ids=["request-line", "header-without-colon", "nul-in-header", "version"],
)
@pytest.mark.single_process
async def test_malformed_request_is_400(backends, proxy, request_bytes: bytes) -> None:
    (b,) = await backends(1)
    server = await proxy(proxy_config({"app": [b.address]}))
    with access_lines(server) as entries:
        response = await raw_exchange(server, request_bytes)
    assert status_of(response) == 400
    assert b.requests == 0
    assert any(e.get("status") == 400 for e in entries), entries
    await no_leak(server)


async def test_header_section_over_limit_is_431(backends, proxy) -> None:
    (b,) = await backends(1)
    server = await proxy(
        proxy_config({"app": [b.address]}, "[proxy.limits]\nmax_header_size = 2048\n")
    )
    many = b"".join(b"X-H%d: %s\r\n" % (i, b"v" * 40) for i in range(60))
    response = await raw_exchange(server, b"GET / HTTP/1.1\r\nHost: x\r\n" + many + b"\r\n")
    assert status_of(response) == 431
    one_huge = b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"v" * 100_000 + b"\r\n\r\n"
    assert status_of(await raw_exchange(server, one_huge)) == 431
    assert b.requests == 0
    await no_leak(server)


async def test_uri_over_limit_is_414(backends, proxy) -> None:
    (b,) = await backends(1)
    server = await proxy(
        proxy_config({"app": [b.address]}, "[proxy.limits]\nmax_uri_size = 1024\n")
    )
    response = await raw_exchange(server, b"GET /" + b"a" * 2000 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status_of(response) == 414
    ok = await raw_exchange(
        server, b"GET /" + b"a" * 900 + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    assert status_of(ok) == 200
    await no_leak(server)


async def test_slowloris_is_cut_off_after_client_header_timeout(backends, proxy) -> None:
    (b,) = await backends(1)
    server = await proxy(
        proxy_config({"app": [b.address]}, "[proxy.timeouts]\nclient_header = 0.5\n")
    )
    reader, writer = await open_raw(server)
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n")
    answer = asyncio.create_task(read_all(reader))
    dribbled = 0
    # One header byte every 50 ms: always busy, never done; bounded to 30 s of trying.
    with contextlib.suppress(ConnectionError):
        while not answer.done() and dribbled < 600:
            writer.write(b"X")
            dribbled += 1
            await asyncio.wait([answer], timeout=0.05)
    response = await answer
    writer.close()
    assert status_of(response) == 408
    assert dribbled < 600
    assert b.requests == 0
    await no_leak(server)


async def test_idle_keep_alive_connection_is_closed(backends, proxy) -> None:
    (b,) = await backends(1)
    server = await proxy(proxy_config({"app": [b.address]}, "[proxy.timeouts]\nhttp_idle = 0.3\n"))
    reader, writer = await open_raw(server)
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    async with asyncio.timeout(30):
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(head.lower().partition(b"content-length: ")[2].partition(b"\r\n")[0])
        await reader.readexactly(length)
    assert status_of(head) == 200
    assert await read_all(reader) == b""  # then the proxy closes the idle connection
    writer.close()
    await no_leak(server)


async def test_idle_websocket_is_closed(backends, proxy, session) -> None:
    (b,) = await backends(1)
    server = await proxy(
        proxy_config({"app": [b.address]}, "[proxy.timeouts]\nwebsocket_idle = 0.3\n")
    )
    ws = await session.ws_connect(url(server, "/ws"))
    await ws.send_str("ping")
    assert (await ws.receive(timeout=30)).data == "ping"
    msg = await ws.receive(timeout=30)
    assert msg.type in (
        aiohttp.WSMsgType.CLOSE,
        aiohttp.WSMsgType.CLOSED,
        aiohttp.WSMsgType.CLOSING,
    )
    await ws.close()
    await no_leak(server)


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        (b"Sec-WebSocket-Version: 13\r\n", 400),
        (b"Sec-WebSocket-Key: " + KEY + b"\r\nSec-WebSocket-Version: 8\r\n", 426),
        (b"Sec-WebSocket-Key: " + KEY + b"\r\n", 426),
        (b"Sec-WebSocket-Key: c2hvcnQ=\r\nSec-WebSocket-Version: 13\r\n", 400),
        (
            b"Sec-WebSocket-Key: " + KEY + b"\r\nSec-WebSocket-Key: " + KEY + b"\r\n"
            b"Sec-WebSocket-Version: 13\r\n",
            400,
        ),
    ],
    ids=["no-key", "version-8", "no-version", "short-key", "two-keys"],
)
async def test_bad_websocket_handshake_is_refused_without_a_backend(
    backends, proxy, headers: bytes, status: int
) -> None:
    """400, or 426 with the version this proxy speaks (RFC 6455 §4.4)."""
    (b,) = await backends(1)
    server = await proxy(proxy_config({"app": [b.address]}))
    request = (
        b"GET /any HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
        + headers
        + b"\r\n"
    )
    response = await raw_exchange(server, request)
    assert status_of(response) == status
    assert b.requests == 0
    assert b"Sec-WebSocket" in response
    assert (b"\r\nSec-WebSocket-Version: 13\r\n" in response) == (status == 426)
    await no_leak(server)


@pytest.mark.single_process
async def test_listener_max_connections_is_503(backends, proxy) -> None:
    (b,) = await backends(1)
    server = await proxy(
        proxy_config({"app": [b.address]}, "[proxy.limits]\nmax_connections = 2\n")
    )
    held = [await open_raw(server) for _ in range(2)]
    await eventually_async(lambda: server.listeners[0].active == 2, 30, "two connections held")
    response = await raw_exchange(server, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status_of(response) == 503
    for _, writer in held:
        writer.close()
    await no_leak(server)
    ok = await raw_exchange(server, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert status_of(ok) == 200


async def test_server_max_conns_is_503(backends, proxy, session) -> None:
    (b,) = await backends(1)
    server = await proxy(
        config_from_text(f'servers = [{{ address = "{b.address}", max_conns = 1 }}]')
    )
    # both clients ask for a close, so that no_leak need not wait out the keep-alive timeout
    gated = session.get(url(server, "/gated"), headers={"Connection": "close"})
    async with gated as first:
        assert await first.content.readexactly(6) == b"first;"
        request = b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        response = await raw_exchange(server, request)
        assert status_of(response) == 503
        assert response.endswith(b"no server is available; retry later\n")
        b.gate.set()
        assert await first.content.read() == b"second"
    await no_leak(server)


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"0\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\nabcde",
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4, 4\r\n\r\nabcd",
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"ffffffffffffffffff\r\nabc\r\n0\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: +4\r\n\r\nabcd",
        b"POST / HTTP/1.0\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    ],
    ids=[
        "cl-and-te",
        "two-cl",
        "cl-list",
        "chunk-size-not-hex",
        "chunk-size-overflow",
        "te-not-ending-chunked",
        "space-before-colon",
        "folded-te",
        "signed-cl",
        "te-in-http10",
    ],
)
async def test_smuggling_shapes_are_400(backends, proxy, request_bytes: bytes) -> None:
    (b,) = await backends(1)
    server = await proxy(proxy_config({"app": [b.address]}))
    response = await raw_exchange(server, request_bytes)
    assert status_of(response) == 400
    assert b.requests == 0
    await no_leak(server)


@contextlib.asynccontextmanager
async def raw_backend(answer: bytes) -> AsyncIterator[str]:
    """A backend that reads a request head, writes `answer` and closes."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            await reader.readuntil(b"\r\n\r\n")
            writer.write(answer)
            await writer.drain()
        writer.close()

    srv = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield f"127.0.0.1:{srv.sockets[0].getsockname()[1]}"
    finally:
        srv.close()
        await srv.wait_closed()


@pytest.mark.single_process
async def test_backend_garbage_is_502(proxy) -> None:
    async with raw_backend(b"SSH-2.0-OpenSSH_9.2\r\n\r\n") as address:
        server = await proxy(proxy_config({"app": [address]}))
        with access_lines(server) as entries:
            response = await raw_exchange(server, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert status_of(response) == 502
        assert any(e.get("status") == 502 for e in entries), entries
        await no_leak(server)


async def test_backend_closing_before_answering_is_502(proxy) -> None:
    async with raw_backend(b"") as address:
        server = await proxy(proxy_config({"app": [address]}))
        response = await raw_exchange(server, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert status_of(response) == 502
        await no_leak(server)


async def test_backend_closing_mid_response_closes_the_client_cleanly(proxy) -> None:
    partial = b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + b"x" * 100
    async with raw_backend(partial) as address:
        server = await proxy(proxy_config({"app": [address]}))
        reader, writer = await open_raw(server)
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        response = await read_all(reader)  # the proxy closes: the body is visibly cut short
        writer.close()
        assert status_of(response) == 200
        assert len(response.partition(b"\r\n\r\n")[2]) == 100
        await no_leak(server)
        ok = await raw_exchange(server, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert status_of(ok) == 200  # the node serves on
