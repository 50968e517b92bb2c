"""WebSocket through the proxy: echo, big messages, subprotocols, close codes, the tunnel itself."""

from __future__ import annotations

import asyncio
import gc
import os

import aiohttp
import pytest

from haproxy_py.proxy.frontend import ClientConnection
from haproxy_py.proxy.server import ProxyServer
from tests.integration.proxy.support import access_lines, proxy_config, raw_exchange, url
from tests.support.wait import eventually_async


async def test_echo_text_and_binary_including_1mib(backends, proxy, session) -> None:
    (b,) = await backends(1)
    server = await proxy(proxy_config({"app": [b.address]}))
    big = os.urandom(1 << 20)
    async with session.ws_connect(url(server, "/ws"), max_msg_size=8 << 20) as ws:
        await ws.send_str("hello")
        assert (await ws.receive_str()) == "hello"
        await ws.send_bytes(b"\x00\x01\x02")
        assert (await ws.receive_bytes()) == b"\x00\x01\x02"
        for _ in range(3):
            await ws.send_bytes(big)
            assert (await ws.receive_bytes()) == big
        text = "é" * (1 << 19)  # 1 MiB of UTF-8
        await ws.send_str(text)
        assert (await ws.receive_str()) == text


async def test_large_reads_share_one_buffer_and_arrive_intact(backends, proxy, session) -> None:
    """Large reads go into one shared buffer: a write the peer has not taken yet must keep
    its bytes (a client that reads late), and small messages after them still relay."""
    (b,) = await backends(1)
    server = await proxy(proxy_config({"app": [b.address]}))
    messages = [os.urandom((1 << 20) + i) for i in range(16)]
    async with session.ws_connect(url(server, "/ws"), max_msg_size=8 << 20) as ws:

        async def send() -> None:
            for message in messages:
                await ws.send_bytes(message)

        sending = asyncio.create_task(send())
        await asyncio.sleep(0.5)  # the echoes pile up in the proxy's write buffers meanwhile
        for message in messages:
            assert (await ws.receive_bytes()) == message
        await sending
        if isinstance(server, ProxyServer):
            (tunnel,) = server.tunnels.open
            assert tunnel.buffered
        await ws.send_str("small again")
        assert (await ws.receive_str()) == "small again"


async def test_subprotocol_negotiated_end_to_end(backends, proxy, session) -> None:
    (b,) = await backends(1)
    server = await proxy(proxy_config({"app": [b.address]}))
    async with session.ws_connect(url(server, "/ws"), protocols=("nope", "superchat")) as ws:
        assert ws.protocol == "superchat"
    async with session.ws_connect(url(server, "/ws"), protocols=("nope",)) as ws:
        assert ws.protocol is None


async def test_extensions_offered_by_client_reach_backend(backends, proxy, session) -> None:
    """permessage-deflate is negotiated by the backend, not by the proxy."""
    (b,) = await backends(1)
    server = await proxy(proxy_config({"app": [b.address]}))
    async with session.ws_connect(url(server, "/ws"), compress=15) as ws:
        assert ws.compress == 15
        await ws.send_str("z" * 10000)
        assert (await ws.receive_str()) == "z" * 10000


@pytest.mark.single_process
async def test_client_close_code_reaches_backend(backends, proxy, session) -> None:
    (b,) = await backends(1)
    server = await proxy(proxy_config({"app": [b.address]}))
    with access_lines(server) as logs:
        async with session.ws_connect(url(server, "/ws")) as ws:
            await ws.send_str("x")
            await ws.receive_str()
            await ws.close(code=4001, message=b"bye")
        await eventually_async(lambda: b.ws_close_codes == [4001], 30, "backend saw close 4001")
        await eventually_async(lambda: not server.tunnels.open, 30, "tunnel ended")
    (line,) = [entry for entry in logs if entry["event"] == "websocket"]
    assert (line["close_code"], line["closed_by"]) == (4001, "client")
    assert line["backend"] == "app" and line["server"] == b.address
    assert line["bytes_in"] > 0 and line["bytes_out"] > 0


async def test_backend_close_code_reaches_client(backends, proxy, session) -> None:
    (b,) = await backends(1)
    server = await proxy(proxy_config({"app": [b.address]}))
    async with session.ws_connect(url(server, "/ws")) as ws:
        await ws.send_str("close:4002")
        msg = await ws.receive()
        assert msg.type == aiohttp.WSMsgType.CLOSE
        assert ws.close_code == 4002


@pytest.mark.single_process
async def test_refused_upgrade_answer_goes_to_client(backends, proxy) -> None:
    """A backend that answers the Upgrade with a normal response: the client gets that answer."""
    (b,) = await backends(1)
    server = await proxy(proxy_config({"app": [b.address]}))
    raw = await raw_exchange(
        server,
        b"GET /status/403 HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
        b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    )
    assert raw.startswith(b"HTTP/1.1 403 ")
    assert raw.endswith(b"as asked")
    assert not server.tunnels.open


@pytest.mark.single_process
async def test_tunnel_keeps_no_http_machinery(backends, proxy, session) -> None:
    """While tunnels are open no ClientConnection (parser, request state) stays alive."""
    (b,) = await backends(1)
    server = await proxy(proxy_config({"app": [b.address]}))
    sockets = [await session.ws_connect(url(server, "/ws")) for _ in range(5)]
    try:
        assert len(server.tunnels) == 5
        gc.collect()
        assert not [o for o in gc.get_objects() if isinstance(o, ClientConnection)]
        assert server.runtime.backends["app"].servers[0].load() == 5
        for ws in sockets:
            await ws.send_str("still works")
            assert (await ws.receive_str()) == "still works"
    finally:
        for ws in sockets:
            await ws.close()
    await eventually_async(lambda: not server.tunnels.open, 30, "tunnels closed")
    assert server.runtime.backends["app"].servers[0].load() == 0
    assert server.listeners[0].active == 0


@pytest.mark.single_process
async def test_backpressure_bounds_buffering(backends, proxy, session) -> None:
    """A client that stops reading makes the proxy stop reading the backend."""
    (b,) = await backends(1)
    server = await proxy(proxy_config({"app": [b.address]}))
    async with session.ws_connect(url(server, "/ws")) as ws:
        await ws.send_str("flood:400")  # 25 MiB the client does not read yet
        await eventually_async(lambda: server.tunnels.open, 30, "tunnel open")
        (tunnel,) = server.tunnels.open
        await eventually_async(lambda: tunnel.bytes_out > 1 << 20, 30, "some bytes relayed")
        previous = -1
        for _ in range(300):  # until the relay stalls (30 s at most)
            if tunnel.bytes_out == previous:
                break
            previous = tunnel.bytes_out
            await asyncio.sleep(0.1)
        assert tunnel.bytes_out < 16 << 20
        assert tunnel.client_half.transport.get_write_buffer_size() < 4 << 20
        for _ in range(400):
            assert len(await ws.receive_bytes()) == 65536


@pytest.mark.single_process
async def test_idle_tunnel_closed(backends, proxy, session) -> None:
    (b,) = await backends(1)
    config = proxy_config({"app": [b.address]}, extra="[proxy.timeouts]\nwebsocket_idle = 0.4\n")
    server = await proxy(config)
    async with session.ws_connect(url(server, "/ws")) as ws:
        msg = await ws.receive(timeout=30)
        assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
    await eventually_async(lambda: not server.tunnels.open, 30, "idle tunnel closed")


@pytest.mark.single_process
@pytest.mark.parametrize("count", [50])
async def test_many_sessions_spread_and_counted(backends, proxy, session, count: int) -> None:
    """Open WebSockets are spread by least_conn and counted in /status terms."""
    b0, b1 = await backends(2)
    server = await proxy(proxy_config({"app": [b0.address, b1.address]}))
    sockets = [await session.ws_connect(url(server, "/ws")) for _ in range(count)]
    try:
        names = []
        for ws in sockets:
            await ws.send_str("whoami")
            names.append(await ws.receive_str())
        assert names.count("b0") == names.count("b1") == count // 2
        assert len(server.tunnels) == count and server.tunnels.total == count
    finally:
        for ws in sockets:
            await ws.close()
