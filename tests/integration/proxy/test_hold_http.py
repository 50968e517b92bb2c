"""`POST /hold?address=` and HTTP: keep-alive connections on the held address are shut
(FIN after the response in flight, at once when idle) and the hold answers only once every
client acknowledged all; a connection that arrives during the hold gets a 503."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import aiohttp
import pytest

from agent.proxy import ProxyClient
from haproxy_py.proxy import addresshold
from haproxy_py.proxy.server import ProxyServer
from tests.integration.proxy.raw import (
    keep_alive_exchange,
    no_leak,
    open_raw,
    read_all,
    status_of,
)
from tests.integration.proxy.support import admin_url, proxy_config, raw_exchange, url
from tests.support.wait import eventually_async

HOLD = "/hold?address=127.0.0.1"


async def post(session: aiohttp.ClientSession, server: ProxyServer, path: str) -> Any:
    async with session.post(admin_url(server, path)) as answer:
        assert answer.status in (200, 202), await answer.text()
        return await answer.json()


def held(connections: int) -> dict[str, object]:
    return {
        "status": "held",
        "address": "127.0.0.1",
        "websockets": 0,
        "connections": connections,
        "unacknowledged": 0,
    }


async def test_hold_shuts_an_idle_keep_alive_connection_cleanly(backends, proxy, session) -> None:
    (b,) = await backends(1)
    server = await proxy(proxy_config({"app": [b.address]}))
    reader, writer = await open_raw(server)
    assert await keep_alive_exchange(reader, writer, "/one") == 200
    assert await post(session, server, HOLD) == held(1)
    assert await read_all(reader) == b""  # a FIN, not a reset
    writer.write(b"GET /late HTTP/1.1\r\nHost: x\r\n\r\n")  # read and dropped: still no reset
    await writer.drain()
    writer.close()
    await writer.wait_closed()
    await no_leak(server)


async def test_hold_waits_for_the_response_in_flight_which_ends_the_connection(
    backends, proxy, session
) -> None:
    (b,) = await backends(1)
    server = await proxy(proxy_config({"app": [b.address]}))
    reader, writer = await open_raw(server)
    writer.write(b"POST /gated-upload HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n12345")
    await asyncio.wait_for(b.first_chunk.wait(), 30)  # the exchange has begun
    hold = asyncio.create_task(post(session, server, HOLD))
    await asyncio.sleep(0.3)
    assert not hold.done()  # its response is still due
    writer.write(b"67890")
    response = await read_all(reader)
    assert status_of(response) == 200
    assert b"\r\nconnection: close\r\n" in response.lower()
    assert response.endswith(b"\r\n\r\n10")  # the whole response, then the FIN
    assert await asyncio.wait_for(hold, 30) == held(1)
    writer.close()
    await no_leak(server)


async def test_hold_answers_only_once_the_client_acknowledged_everything(
    backends, proxy, session
) -> None:
    """A client that reads slowly (small receive window): the bytes it has not taken are
    unacknowledged, and the hold waits for them."""
    (b,) = await backends(1)
    server = await proxy(proxy_config({"app": [b.address]}))
    loop = asyncio.get_running_loop()
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        await loop.sock_connect(sock, server.address("web"))
        await loop.sock_sendall(sock, b"GET /stream?n=8&size=65536 HTTP/1.1\r\nHost: x\r\n\r\n")
        response = await asyncio.wait_for(loop.sock_recv(sock, 64), 30)  # the exchange began
        hold = asyncio.create_task(post(session, server, HOLD))
        await asyncio.sleep(0.5)
        assert not hold.done()
        async with asyncio.timeout(30):
            while chunk := await loop.sock_recv(sock, 65536):
                response += chunk
        assert status_of(response) == 200
        assert response.endswith(b"\r\n0\r\n\r\n")  # the chunked body's end, then the FIN
        assert await asyncio.wait_for(hold, 30) == held(1)
    await no_leak(server)


async def test_a_connection_made_during_the_hold_gets_503_until_the_drain(
    backends, proxy, session
) -> None:
    (b,) = await backends(1)
    server = await proxy(proxy_config({"app": [b.address]}))
    assert await post(session, server, HOLD) == held(0)
    reader, writer = await open_raw(server)
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    response = await read_all(reader)  # the 503, then a FIN (no reset)
    assert status_of(response) == 503
    assert b"moving to another node" in response
    assert b"\r\nRetry-After: 1\r\n" in response
    writer.close()
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await session.ws_connect(url(server, "/ws"))
    assert refused.value.status == 503
    await post(session, server, "/drain?address=127.0.0.1")  # the hold ends with it
    ws = await session.ws_connect(url(server, "/ws"))
    await ws.send_str("served")
    assert (await ws.receive(timeout=30)).data == "served"
    await ws.close()
    await no_leak(server)


@pytest.mark.single_process
async def test_an_address_still_here_after_the_hold_serves_again(
    backends, proxy, session, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The move was called off (the address stayed past `FENCE_WITHIN` after the answer): new
    connections are served again; when the hold ends by itself, the connections it shut
    whose clients kept them are closed, and the new ones stay."""
    monkeypatch.setattr(addresshold, "FENCE_WITHIN", 1.0)
    monkeypatch.setattr(addresshold, "RELEASE_AFTER", 2.0)
    (b,) = await backends(1)
    server = await proxy(proxy_config({"app": [b.address]}))
    shut = await open_raw(server)
    assert await keep_alive_exchange(*shut, "/one") == 200
    assert await post(session, server, HOLD) == held(1)
    assert await read_all(shut[0]) == b""  # (its client keeps its side open)
    request = b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    assert status_of(await raw_exchange(server, request)) == 503
    await asyncio.sleep(1.2)
    kept = await open_raw(server)
    assert await keep_alive_exchange(*kept, "/two") == 200
    (listener,) = server.listeners
    await eventually_async(lambda: len(listener.connections) == 1, 30, "the shut one closed")
    assert not server.held
    assert await keep_alive_exchange(*kept, "/three") == 200
    for _, writer in (shut, kept):
        writer.close()
    await no_leak(server)


async def test_the_agent_hears_what_the_hold_held(backends, proxy) -> None:
    (b,) = await backends(1)
    server = await proxy(proxy_config({"app": [b.address]}))
    reader, writer = await open_raw(server)
    assert await keep_alive_exchange(reader, writer, "/one") == 200
    agent = ProxyClient(admin_url(server, ""), 30)
    try:
        assert await agent.hold_address("127.0.0.1") == (
            "/hold answered 200 (0 WebSockets, 1 HTTP connections, 0 with bytes unacknowledged)"
        )
    finally:
        await agent.close()
    assert await read_all(reader) == b""
    writer.close()
    await no_leak(server)
