"""Drain: POST /drain (whole node or one address), /undrain and SIGTERM; WebSockets get 1001."""

from __future__ import annotations

import asyncio
import base64
import os
import signal
import sys
import tomllib
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest

from agent.netlink import CAP_NET_ADMIN, CAP_NET_RAW
from haproxy_py.configfile import Table
from haproxy_py.lab import activate
from haproxy_py.proxy import addresshold
from haproxy_py.proxy.config import ProxyConfig, parse_proxy
from haproxy_py.proxy.server import ProxyServer
from tests.integration.proxy.process import CONFIG, read_event, running
from tests.integration.proxy.raw import keep_alive_exchange, no_leak, open_raw, read_all
from tests.integration.proxy.support import Backend, admin_url, proxy_config, url
from tests.support.etcd import free_ports
from tests.support.wait import eventually_async


async def healthz(session: aiohttp.ClientSession, server: ProxyServer) -> int:
    async with session.get(admin_url(server, "/healthz")) as response:
        return response.status


async def test_post_drain_closes_websockets_with_1001_and_undrain_serves_again(
    backends, proxy, session
) -> None:
    (b,) = await backends(1)
    server = await proxy(proxy_config({"app": [b.address]}))
    sockets = [await session.ws_connect(url(server, "/ws")) for _ in range(3)]
    async with session.get(url(server, "/gated")) as in_flight:
        assert await in_flight.content.readexactly(6) == b"first;"
        async with session.post(admin_url(server, "/drain")) as answer:
            assert answer.status == 202
        for ws in sockets:
            msg = await ws.receive(timeout=30)
            assert (msg.type, msg.data) == (aiohttp.WSMsgType.CLOSE, 1001)
            await ws.close()
        await eventually_async(lambda: len(b.ws_close_codes) == 3, 30, "backend saw the closes")
        assert b.ws_close_codes == [1001, 1001, 1001]
        assert await healthz(session, server) == 503
        with pytest.raises(aiohttp.ClientConnectionError):
            async with session.get(url(server, "/new")) as refused:
                await refused.read()
        b.gate.set()  # the HTTP request in flight still completes
        assert await in_flight.content.read() == b"second"
    address = server.address("web")
    async with session.post(admin_url(server, "/undrain")) as answer:
        assert answer.status == 200
    assert server.address("web") == address
    assert await healthz(session, server) == 200
    async with session.get(url(server, "/again")) as again:
        assert again.status == 200
    ws = await session.ws_connect(url(server, "/ws"))
    await ws.send_str("back")
    assert (await ws.receive(timeout=30)).data == "back"
    await ws.close()


async def test_close_lands_between_frames_of_a_flood(backends, proxy, session) -> None:
    (b,) = await backends(1)
    server = await proxy(proxy_config({"app": [b.address]}))
    ws = await session.ws_connect(url(server, "/ws"), max_msg_size=0)
    await ws.send_str("flood:400")  # 400 x 64 KiB from the backend, in flight while we drain
    first = await ws.receive(timeout=30)
    assert first.type == aiohttp.WSMsgType.BINARY
    drain = asyncio.create_task(server.drain(grace=30))
    received = 1
    while True:
        msg = await ws.receive(timeout=30)
        if msg.type != aiohttp.WSMsgType.BINARY:
            break
        assert len(msg.data) == 65536  # whole messages only: never a cut frame
        received += 1
    assert (msg.type, msg.data) == (aiohttp.WSMsgType.CLOSE, 1001)
    assert received < 400
    await ws.close()
    assert await drain is True
    await no_leak(server)


@pytest.mark.single_process
async def test_drain_timeout_closes_what_does_not_answer(proxy) -> None:
    """Neither end answers the close (nor closes): the drain timeout ends the session."""
    backend_got: list[bytes] = []

    async def silent_backend(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Accept: x\r\n\r\n"
        )
        backend_got.append(await reader.read(-1))  # reads until the proxy closes

    listening = await asyncio.start_server(silent_backend, "127.0.0.1", 0)
    try:
        address = f"127.0.0.1:{listening.sockets[0].getsockname()[1]}"
        server = await proxy(proxy_config({"app": [address]}, "[proxy.timeouts]\ndrain = 0.5\n"))
        reader, writer = await open_raw(server)
        key = base64.b64encode(b"0123456789abcdef")
        writer.write(
            b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
            b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: " + key + b"\r\n\r\n"
        )
        async with asyncio.timeout(30):
            head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101")
        await eventually_async(lambda: len(server.tunnels) == 1, 30, "tunnel open")
        assert await server.drain() is False
        async with asyncio.timeout(30):
            rest = await reader.read(-1)
        assert rest == b"\x88\x02\x03\xe9"  # its 1001, then the connection was closed
        writer.close()
        await eventually_async(lambda: len(backend_got) == 1, 30, "backend connection closed")
        assert backend_got[0][:2] == b"\x88\x82"  # a masked close with a code
        await no_leak(server)
    finally:
        listening.close()
        await listening.wait_closed()


@pytest.mark.asyncio(loop_factories=["asyncio"])
async def test_sigterm_drains_websockets_then_exits(tmp_path: Path) -> None:
    backend = Backend("term")
    await backend.start()
    try:
        async with running(tmp_path / "node.toml", backend.address) as (process, started):
            listener = str(started["listeners"]["web"])
            async with aiohttp.ClientSession() as session:
                ws = await session.ws_connect(f"http://{listener}/ws")
                await ws.send_str("hi")
                assert (await ws.receive(timeout=30)).data == "hi"
                process.send_signal(signal.SIGTERM)
                msg = await ws.receive(timeout=30)
                assert (msg.type, msg.data) == (aiohttp.WSMsgType.CLOSE, 1001)
                await ws.close()
            drained = await read_event(process, "drained")
            assert drained["closed_at_timeout"] == 0
            async with asyncio.timeout(30):
                assert await process.wait() == 0
            assert backend.ws_close_codes == [1001]
    finally:
        await backend.stop()


def two_address_config(backend: str) -> ProxyConfig:
    """Listeners on 127.0.0.2 and 127.0.0.3: two local addresses, as two VIPs on one node."""
    text = (
        '[admin]\nbind = "127.0.0.1:0"\n\n'
        '[[listeners]]\nname = "moved"\nbind = "127.0.0.2:0"\n\n'
        '[[listeners]]\nname = "kept"\nbind = "127.0.0.3:0"\n\n'
        f'[[routes]]\nbackend = "app"\n\n[backends.app]\nservers = ["{backend}"]\n'
    )
    return parse_proxy(Table(tomllib.loads(text), "test.toml", ""))


async def test_drain_one_address_closes_only_its_connections(backends, proxy, session) -> None:
    (b,) = await backends(1)
    server = await proxy(two_address_config(b.address))
    moved = "http://{}:{}".format(*server.address("moved"))
    kept = "http://{}:{}".format(*server.address("kept"))
    moved_ws = [await session.ws_connect(f"{moved}/ws") for _ in range(2)]
    kept_ws = [await session.ws_connect(f"{kept}/ws") for _ in range(2)]
    moved_http = await asyncio.open_connection(*server.address("moved"))
    kept_http = await asyncio.open_connection(*server.address("kept"))
    assert await keep_alive_exchange(*moved_http, "/one") == 200
    assert await keep_alive_exchange(*kept_http, "/one") == 200

    async with session.post(admin_url(server, "/drain?address=127.0.0.2")) as answer:
        assert answer.status == 202
        body = await answer.json()
    assert (body["websockets"], body["connections"]) == (2, 1)

    for ws in moved_ws:
        msg = await ws.receive(timeout=30)
        assert (msg.type, msg.data) == (aiohttp.WSMsgType.CLOSE, 1001)
        await ws.close()
    assert await read_all(moved_http[0]) == b""  # the idle keep-alive connection was closed
    for i, ws in enumerate(kept_ws):
        await ws.send_str(f"still {i}")
        assert (await ws.receive(timeout=30)).data == f"still {i}"
    assert await keep_alive_exchange(*kept_http, "/two") == 200
    await eventually_async(
        lambda: b.ws_close_codes == [1001, 1001], 30, "backend saw two 1001 closes"
    )

    assert await healthz(session, server) == 200  # the node itself keeps serving
    again = await session.ws_connect(f"{moved}/ws")  # and its listener stays open
    await again.send_str("back")
    assert (await again.receive(timeout=30)).data == "back"
    for ws in [*kept_ws, again]:
        await ws.close()
    kept_http[1].close()
    moved_http[1].close()
    await no_leak(server)


async def test_drain_address_refuses_a_bad_address(backends, proxy, session) -> None:
    (b,) = await backends(1)
    server = await proxy(proxy_config({"app": [b.address]}))
    async with session.post(admin_url(server, "/drain?address=not-an-ip")) as answer:
        assert answer.status == 400
        assert "198.18.0.100" in (await answer.json())["reason"]
    assert await healthz(session, server) == 200
    assert not server.draining


def _no_raw_capability(port: int, argv: list[str]) -> list[str]:
    drop = "-net_raw,-net_admin"
    return ["setpriv", f"--inh-caps={drop}", f"--bounding-set={drop}", *argv]


def _passed_transparent(port: int, argv: list[str]) -> list[str]:
    """As haproxy-py.socket starts it: the listener passed with IP_TRANSPARENT set, and
    every capability but CAP_NET_BIND_SERVICE dropped (`haproxy_py.lab.activate`)."""
    return activate.command([f"127.0.0.2:{port}"], argv)


@pytest.mark.parametrize(
    ("launch", "can_send"),
    [(_no_raw_capability, False), (_passed_transparent, True)],
    ids=["no-capability", "passed-transparent"],
)
@pytest.mark.asyncio(loop_factories=["asyncio"])
async def test_drain_address_sends_from_a_departed_address_only_on_a_transparent_socket(
    tmp_path: Path, launch: Callable[[int, list[str]], list[str]], can_send: bool
) -> None:
    """Without CAP_NET_RAW/CAP_NET_ADMIN the proxy cannot make a connection send from an
    address already gone: the answer and the log say so. Started from a socket passed with
    IP_TRANSPARENT (haproxy-py.socket), it can, with no capability. (127.0.0.2 is still
    present here, so the 1001 arrives either way.)"""
    if os.geteuid() != 0:
        pytest.fail("dropping capabilities and binding a transparent socket need root")
    backend = Backend("nocap")
    await backend.start()
    (port,) = free_ports(1)
    config = tmp_path / "node.toml"
    config.write_text(CONFIG.format(bind=f"127.0.0.2:{port}", server=backend.address))
    argv = [sys.executable, "-m", "haproxy_py.proxy", "run", "--config", str(config)]
    process = await asyncio.create_subprocess_exec(
        *launch(port, argv), stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
    )
    try:
        started = await read_event(process, "proxy started")
        status = await asyncio.to_thread(Path(f"/proc/{process.pid}/status").read_text)
        effective = int(status.split("CapEff:")[1].split()[0], 16)
        assert not effective & (1 << CAP_NET_RAW | 1 << CAP_NET_ADMIN), status
        listener, admin = started["listeners"]["web"], started["admin"]
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
            ws = await session.ws_connect(f"http://{listener}/ws")
            async with session.post(f"http://{admin}/drain?address=127.0.0.2") as answer:
                assert answer.status == 202
                assert (await answer.json())["can_send"] is can_send
            if not can_send:
                warning = await read_event(
                    process, "no close can leave from an address this node no longer has", False
                )
                assert warning["address"] == "127.0.0.2"
                assert "haproxy-py.socket" in str(warning["fix"])
            msg = await ws.receive(timeout=30)
            assert (msg.type, msg.data) == (aiohttp.WSMsgType.CLOSE, 1001)
            await ws.close()
    finally:
        process.kill()
        await process.wait()
        await backend.stop()


async def test_hold_sends_nothing_more_until_the_drain_whose_1001_comes_first(
    backends, proxy, session
) -> None:
    """`POST /hold?address=` (before a VIP leaves): answered once every client acknowledged
    all; the backend's later frames are not sent; the drain's 1001 is the next frame."""
    (b,) = await backends(1)
    server = await proxy(proxy_config({"app": [b.address]}))
    ws = await session.ws_connect(url(server, "/ws"))
    await ws.send_str("before")
    assert (await ws.receive(timeout=30)).data == "before"
    async with session.post(admin_url(server, "/hold?address=127.0.0.1")) as answer:
        assert answer.status == 200
        assert await answer.json() == {
            "status": "held",
            "address": "127.0.0.1",
            "websockets": 1,
            "connections": 0,
            "unacknowledged": 0,
        }
    await ws.send_str("while held")
    with pytest.raises(TimeoutError):
        await ws.receive(timeout=0.5)
    async with session.post(admin_url(server, "/drain?address=127.0.0.1")) as answer:
        assert answer.status == 202
    msg = await ws.receive(timeout=30)
    assert (msg.type, msg.data) == (aiohttp.WSMsgType.CLOSE, 1001)
    await ws.close()
    await no_leak(server)


async def test_a_hold_no_drain_follows_ends_by_itself(
    backends, proxy, session, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The VIP stayed (its release was called off): the clients get what was held back."""
    monkeypatch.setattr(addresshold, "RELEASE_AFTER", 0.5)
    (b,) = await backends(1)
    server = await proxy(proxy_config({"app": [b.address]}))
    ws = await session.ws_connect(url(server, "/ws"))
    async with session.post(admin_url(server, "/hold?address=127.0.0.1")) as answer:
        assert (await answer.json())["websockets"] == 1
    await ws.send_str("held")
    assert (await ws.receive(timeout=30)).data == "held"
    await ws.close()
    async with session.get(url(server, "/again")) as again:  # no 503 once the hold ended
        assert again.status == 200
    async with session.post(admin_url(server, "/hold?address=nowhere")) as answer:
        assert answer.status == 400
