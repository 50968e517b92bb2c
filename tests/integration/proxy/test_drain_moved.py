"""A drained address's WebSockets end with the 1001 and a FIN, and the proxy goes on reading:
the client's close frame, sent after both, is read, never answered with a reset.

On a planned move the client's answer reaches the old owner only if the address comes back to
it (moves back and forth, or a move called off). A socket the proxy had closed would answer
it with a reset; a half-closed one reads it and finishes the close as TCP means to.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket

import aiohttp
import pytest

from haproxy_py.proxy.server import ProxyServer
from tests.integration.adversarial.client import HANDSHAKE
from tests.integration.proxy.raw import no_leak
from tests.integration.proxy.support import admin_url, proxy_config
from tests.support.wait import eventually_async

TCP_CLOSE, TCP_CLOSE_WAIT = 7, 8
GOING_AWAY = b"\x88\x02\x03\xe9"
LOCAL = ipaddress.ip_address("127.0.0.1")
CLIENT_CLOSE = b"\x88\x82\x00\x00\x00\x00\x03\xe9"  # masked (with a zero key), code 1001


def tcp_state(sock: socket.socket) -> int:
    return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)[0]


async def upgraded(server: ProxyServer) -> socket.socket:
    """A raw client socket whose WebSocket through the proxy is open."""
    loop = asyncio.get_running_loop()
    sock = socket.socket()
    sock.setblocking(False)
    await loop.sock_connect(sock, server.address("web"))
    await loop.sock_sendall(sock, b"GET /ws HTTP/1.1\r\n" + HANDSHAKE)
    head = b""
    async with asyncio.timeout(30):
        while b"\r\n\r\n" not in head:
            head += await loop.sock_recv(sock, 4096)
    assert head.startswith(b"HTTP/1.1 101"), head
    return sock


async def until_eof(sock: socket.socket) -> bytes:
    loop, got = asyncio.get_running_loop(), b""
    async with asyncio.timeout(30):
        while chunk := await loop.sock_recv(sock, 4096):
            got += chunk
    return got


async def drain_address(session: aiohttp.ClientSession, server: ProxyServer) -> None:
    async with session.post(admin_url(server, "/drain?address=127.0.0.1")) as answer:
        assert answer.status == 202, await answer.text()
        assert (await answer.json())["websockets"] == 1


async def told_to_go(session: aiohttp.ClientSession, server: ProxyServer) -> socket.socket:
    """A raw WebSocket client through the proxy, after its address's drain: it got the 1001,
    then a FIN."""
    sock = await upgraded(server)
    await drain_address(session, server)
    assert await until_eof(sock) == GOING_AWAY
    return sock


def closed_without_reset(sock: socket.socket) -> None:
    assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0
    assert tcp_state(sock) == TCP_CLOSE_WAIT  # closed by the proxy, not reset


async def test_the_clients_close_after_the_1001_and_fin_is_read_not_reset(
    backends, proxy, session
) -> None:
    (b,) = await backends(1)
    server = await proxy(proxy_config({"app": [b.address]}))
    with await told_to_go(session, server) as sock:
        await asyncio.get_running_loop().sock_sendall(sock, CLIENT_CLOSE)
        await asyncio.wait_for(no_leak(server), 30)  # the proxy read it and closed
        await asyncio.sleep(0.3)  # (a reset would be here by now)
        closed_without_reset(sock)
    assert b.ws_close_codes == [1001]


@pytest.mark.single_process
async def test_a_client_that_never_answers_is_closed_at_the_drain_timeout_without_a_reset(
    backends, proxy, session
) -> None:
    (b,) = await backends(1)
    server = await proxy(proxy_config({"app": [b.address]}, "[proxy.timeouts]\ndrain = 0.5\n"))
    with await told_to_go(session, server) as sock:
        assert len(server.tunnels) == 1  # still reading the client after the backend closed
        await asyncio.wait_for(no_leak(server), 30)
        await asyncio.sleep(0.3)
        closed_without_reset(sock)


@pytest.mark.single_process
async def test_a_whole_drain_does_not_wait_for_a_moved_addresss_client(
    backends, proxy, session
) -> None:
    """SIGTERM after a moved address's drain: its half-closed tunnels close at once."""
    (b,) = await backends(1)
    server = await proxy(proxy_config({"app": [b.address]}))
    with await told_to_go(session, server) as sock:
        assert await asyncio.wait_for(server.drain(grace=30), 10) is True
        closed_without_reset(sock)


@pytest.mark.single_process
async def test_an_address_that_leaves_during_a_whole_drain_is_not_waited_for(
    backends, proxy, session
) -> None:
    """SIGTERM while a client has stopped reading (its 1001 waits behind what it was sent),
    then the node lets the address go: nothing can reach that client any more, so the drain
    ends now instead of at its timeout."""
    (b,) = await backends(1)
    server = await proxy(proxy_config({"app": [b.address]}))
    with await upgraded(server) as sock:
        flood = b"flood:200"  # 12.5 MiB the client does not read
        await asyncio.get_running_loop().sock_sendall(
            sock, bytes([0x81, 0x80 | len(flood)]) + b"\0\0\0\0" + flood
        )
        await asyncio.sleep(0.5)
        draining = asyncio.create_task(server.drain(grace=60))
        await asyncio.sleep(0.2)
        assert not draining.done()
        await drain_address(session, server)
        await asyncio.wait_for(draining, 10)
        assert not server.tunnels


@pytest.mark.single_process
async def test_a_whole_drain_does_not_wait_for_an_exchange_on_a_moved_address(
    backends, proxy, session
) -> None:
    """An HTTP exchange in flight on an address that left: its response could not be
    acknowledged, so SIGTERM's drain closes it at once instead of waiting for it."""
    (b,) = await backends(1)
    server = await proxy(proxy_config({"app": [b.address]}))
    loop = asyncio.get_running_loop()
    with socket.socket() as sock:
        sock.setblocking(False)
        await loop.sock_connect(sock, server.address("web"))
        await loop.sock_sendall(sock, b"GET /slow?delay=60 HTTP/1.1\r\nHost: x\r\n\r\n")
        await eventually_async(lambda: server.connections_on(LOCAL), 30, "the exchange")
        async with session.post(admin_url(server, "/drain?address=127.0.0.1")) as answer:
            assert (await answer.json())["connections"] == 1
        await asyncio.wait_for(server.drain(grace=60), 10)
        assert not server.connections_on(LOCAL)
