"""`POST /hold?address=` and HTTP: keep-alive connections on the held address read no next
request (the one in flight is answered), and the hold answers only once every client
acknowledged all; a connection made during the hold waits too. The drain, once the address
has moved, closes them with a FIN (nothing in front of it), never a reset: their clients
reconnect, to the new owner."""

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

HOLD = "/hold?address=127.0.0.1"
DRAIN = "/drain?address=127.0.0.1"
REQUEST = b"GET /late HTTP/1.1\r\nHost: x\r\n\r\n"


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


async def nothing_for(reader: asyncio.StreamReader, seconds: float = 0.3) -> None:
    """The proxy sends this connection nothing (not even a FIN) for `seconds`."""
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(reader.read(1), seconds)


async def test_a_held_keep_alive_connection_reads_no_request_until_the_drain_closes_it(
    backends, proxy, session
) -> None:
    (b,) = await backends(1)
    server = await proxy(proxy_config({"app": [b.address]}))
    reader, writer = await open_raw(server)
    assert await keep_alive_exchange(reader, writer, "/one") == 200
    assert await post(session, server, HOLD) == held(1)
    writer.write(REQUEST)  # not answered: its answer could be in flight when the address goes
    await nothing_for(reader)
    await post(session, server, DRAIN)
    assert await read_all(reader) == b""  # a FIN, no answer, no reset: the client retries
    await asyncio.wait_for(no_leak(server), 5)  # closed once its request was read and dropped
    writer.close()
    again = await open_raw(server)  # (the drain ended the hold)
    assert await keep_alive_exchange(*again, "/two") == 200
    again[1].close()
    await no_leak(server)


async def test_hold_waits_for_the_response_in_flight(backends, proxy, session) -> None:
    (b,) = await backends(1)
    server = await proxy(proxy_config({"app": [b.address]}))
    reader, writer = await open_raw(server)
    writer.write(b"POST /gated-upload HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n12345")
    await asyncio.wait_for(b.first_chunk.wait(), 30)  # the exchange has begun
    hold = asyncio.create_task(post(session, server, HOLD))
    await asyncio.sleep(0.3)
    assert not hold.done()  # its response is still due
    writer.write(b"67890")
    async with asyncio.timeout(30):
        head = await reader.readuntil(b"\r\n\r\n")
        assert await reader.readexactly(2) == b"10"
    assert status_of(head) == 200
    assert await asyncio.wait_for(hold, 30) == held(1)
    writer.write(REQUEST)
    await nothing_for(reader)
    await post(session, server, DRAIN)
    assert await read_all(reader) == b""
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
            while not response.endswith(b"\r\n0\r\n\r\n"):  # the chunked body's end
                response += await loop.sock_recv(sock, 65536)
        assert status_of(response) == 200
        assert await asyncio.wait_for(hold, 30) == held(1)
        await post(session, server, DRAIN)
        async with asyncio.timeout(30):
            assert await loop.sock_recv(sock, 1) == b""
    await no_leak(server)


async def test_a_connection_made_during_the_hold_waits_for_the_drain(
    backends, proxy, session
) -> None:
    (b,) = await backends(1)
    server = await proxy(proxy_config({"app": [b.address]}))
    assert await post(session, server, HOLD) == held(0)
    reader, writer = await open_raw(server)
    writer.write(REQUEST)
    await nothing_for(reader)
    await post(session, server, DRAIN)
    assert await read_all(reader) == b""  # a FIN, no answer, no reset
    await asyncio.wait_for(no_leak(server), 5)
    writer.close()
    ws = await session.ws_connect(url(server, "/ws"))  # (the drain ended the hold)
    await ws.send_str("served")
    assert (await ws.receive(timeout=30)).data == "served"
    await ws.close()
    await no_leak(server)


@pytest.mark.single_process
async def test_an_address_still_here_after_the_hold_serves_again(
    backends, proxy, session, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The move was called off (the address stayed): new connections are served again
    `FENCE_WITHIN` after the answer, and the held ones once the hold ends by itself."""
    monkeypatch.setattr(addresshold, "FENCE_WITHIN", 1.0)
    monkeypatch.setattr(addresshold, "RELEASE_AFTER", 2.0)
    (b,) = await backends(1)
    server = await proxy(proxy_config({"app": [b.address]}))
    frozen = await open_raw(server)
    assert await keep_alive_exchange(*frozen, "/one") == 200
    assert await post(session, server, HOLD) == held(1)
    answer = asyncio.create_task(keep_alive_exchange(*frozen, "/two"))
    await asyncio.sleep(1.2)
    request = b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    assert status_of(await raw_exchange(server, request)) == 200
    assert not answer.done()
    assert await answer == 200  # once the hold ended
    assert not server.held
    frozen[1].close()
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
        assert await agent.unhold_address("127.0.0.1") == "/unhold answered 200"
        assert await agent.hold_address("127.0.0.1") == (
            "/hold answered 200 (0 WebSockets, 1 HTTP connections, 0 with bytes unacknowledged)"
        )
        assert await agent.drain_address("127.0.0.1") == "/drain answered 202 (0 WebSockets)"
    finally:
        await agent.close()
    assert await read_all(reader) == b""
    writer.close()
    await no_leak(server)


async def test_unhold_serves_the_address_again_at_once(backends, proxy, session) -> None:
    """`POST /unhold?address=`: the VIP came back before its drain (moved back, or the move
    called off): what the hold held is served at once, not when the hold ends by itself."""
    (b,) = await backends(1)
    server = await proxy(proxy_config({"app": [b.address]}))
    ws = await session.ws_connect(url(server, "/ws"))
    frozen = await open_raw(server)
    assert await keep_alive_exchange(*frozen, "/one") == 200
    assert (await post(session, server, HOLD))["websockets"] == 1
    await ws.send_str("held")
    waiting = asyncio.create_task(keep_alive_exchange(*frozen, "/two"))
    with pytest.raises(TimeoutError):
        await ws.receive(timeout=0.3)
    assert await post(session, server, "/unhold?address=127.0.0.1") == {
        "status": "serving",
        "address": "127.0.0.1",
    }
    quick = addresshold.RELEASE_AFTER / 2  # long before the hold would have ended by itself
    assert (await ws.receive(timeout=quick)).data == "held"
    assert await asyncio.wait_for(waiting, quick) == 200
    request = b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    assert status_of(await asyncio.wait_for(raw_exchange(server, request), quick)) == 200
    await ws.close()
    frozen[1].close()
    await no_leak(server)
