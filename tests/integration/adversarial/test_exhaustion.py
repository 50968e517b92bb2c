"""Exhaustion: endless heads, stalled bodies, clients that stop reading, per-address limits,
body size and per-route timeouts. Each case checks what the client got, what the backend
saw, and that the proxy let go of the connection and the server slot."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time

import aiohttp
import pytest
from structlog.testing import capture_logs

from haproxy_py.proxy.server import ProxyServer
from tests.integration.adversarial.client import (
    HANDSHAKE,
    config,
    exchange,
    read_until_closed,
    responses,
    statuses,
)
from tests.integration.proxy.support import admin_url
from tests.support.wait import eventually_async

FAST = (
    "[proxy.timeouts]\nclient_body = 0.3\nupstream_read = 0.3\nsend = 0.3\nupstream_header = 0.3\n"
)


async def released(server: ProxyServer) -> None:
    """Every client connection and server slot released (in every worker, if any)."""

    async def free() -> bool:
        traffic = await server.traffic()
        servers = [s for b in server.runtime.backends.values() for s in b.servers]
        return not any(n for _, n in traffic.listener_connections) and not any(
            s.load() for s in servers
        )

    await eventually_async(free, 30, "every client connection and server slot released")


async def test_endless_header_line_is_431_while_it_arrives(recorder, proxy) -> None:
    """Must hold 4: the proxy answers long before the line ends, and others are served."""
    backend = await recorder()
    server = await proxy(config(backend.address))
    reader, writer = await asyncio.open_connection(*server.address("web"))
    writer.write(b"GET / HTTP/1.1\r\nHost: a\r\nX-Long: ")
    sent = 0
    answer = b""
    async with asyncio.timeout(30):
        while sent < (100 << 20) and not answer:
            try:
                writer.write(b"a" * 65536)
                await writer.drain()
            except ConnectionError:
                break
            sent += 65536
            with contextlib.suppress(TimeoutError):
                answer = await asyncio.wait_for(reader.read(65536), 0.001)
        answer += await read_until_closed(reader)
    writer.close()
    assert statuses(answer) == [431]
    assert sent < (1 << 20)  # cut off within the limit plus a read or two, not at the line's end
    assert backend.seen == []
    ok = await exchange(server, b"GET /other HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    assert statuses(ok) == [200]
    await released(server)


async def test_stalled_request_body_is_408(recorder, proxy) -> None:
    """Must hold 5: a body that stops arriving meets client_body, per read."""
    backend = await recorder()
    server = await proxy(config(backend.address, proxy=FAST))
    started = time.monotonic()
    got = await exchange(
        server,
        [b"POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\n", b"0123456789"],
        pause=0.1,
    )
    assert statuses(got) == [408]
    assert time.monotonic() - started < 10
    await released(server)


async def test_a_slow_but_steady_body_is_not_cut(recorder, proxy) -> None:
    backend = await recorder()
    server = await proxy(config(backend.address, proxy=FAST))
    head = b"POST /steady HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\nConnection: close\r\n\r\n"
    got = await exchange(server, [head] + [b"x"] * 10, pause=0.1)  # 1 s in all, 0.1 s apart
    assert statuses(got) == [200]
    assert backend.seen[0].body == b"x" * 10


async def test_backend_stalling_mid_body_is_cut(recorder, proxy) -> None:
    backend = await recorder()
    server = await proxy(config(backend.address, proxy=FAST))
    got = await exchange(server, b"GET /stall-body HTTP/1.1\r\nHost: a\r\n\r\n")
    (partial,) = responses(got)
    assert partial.status == 200 and partial.body == b"0123456789" and not partial.complete
    await released(server)


async def test_1xx_rearms_the_response_deadline(recorder, proxy) -> None:
    backend = await recorder()
    server = await proxy(config(backend.address, proxy=FAST))
    got = await exchange(server, b"GET /continue-stall HTTP/1.1\r\nHost: a\r\n\r\n")
    assert statuses(got) == [100, 504]
    await released(server)


async def test_client_that_stops_reading_is_aborted(recorder, proxy) -> None:
    """send_timeout: a 10 MiB response to a client that reads nothing."""
    backend = await recorder()
    server = await proxy(config(backend.address, proxy=FAST))
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(server.address("web"))
    sock.sendall(b"GET /flood HTTP/1.1\r\nHost: a\r\n\r\n")
    try:
        await released(server)  # while the client still holds its socket, unread
    finally:
        sock.close()


def upload_then_read(address: tuple[str, int], head: bytes, body: bytes) -> tuple[bool, bytes]:
    """A client that keeps uploading after the answer and reads only at the end: whether
    the whole upload went through, and what it read."""
    with socket.create_connection(address) as sock:
        sock.sendall(head + body[:65536])
        time.sleep(0.5)  # the proxy has answered by now
        uploaded = True
        try:
            sock.sendall(body[65536:])
        except OSError:
            uploaded = False  # reset: the proxy closed with our bytes unread
        sock.shutdown(socket.SHUT_WR)
        got = b""
        with contextlib.suppress(OSError):
            while chunk := sock.recv(65536):
                got += chunk
        return uploaded, got


async def test_unread_response_with_close_is_let_go(recorder, proxy) -> None:
    """A client that reads nothing of a `Connection: close` response is let go after the
    send timeout, whether the response still streams or already sits whole in the proxy's
    buffer behind its close."""
    backend = await recorder()
    server = await proxy(config(backend.address, proxy=FAST))
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2048)
    sock.connect(server.address("web"))
    sock.sendall(b"GET /200k HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    try:
        await eventually_async(
            lambda: backend.paths() == ["/200k"], 30, "the request reached the backend"
        )
        await released(server)  # the client still holds its socket, unread
    finally:
        sock.close()


async def test_error_answer_survives_an_unread_body(recorder, proxy) -> None:
    """Lingering close: a 413 sent while the client still uploads is read, not reset away."""
    backend = await recorder()
    routes = '[[routes]]\npath_prefix = "/small/"\nbackend = "app"\nmax_body_size = 1000\n'
    server = await proxy(config(backend.address, routes=routes))
    body = b"x" * (4 << 20)
    head = b"POST /small/up HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % len(body)
    uploaded, got = await asyncio.to_thread(upload_then_read, server.address("web"), head, body)
    assert statuses(got) == [413]
    assert uploaded  # the proxy read and dropped the rest instead of resetting
    assert backend.seen == []


async def test_chunked_body_over_the_route_limit_is_413(recorder, proxy) -> None:
    backend = await recorder()
    routes = '[[routes]]\npath_prefix = "/small/"\nbackend = "app"\nmax_body_size = 10\n'
    server = await proxy(config(backend.address, routes=routes))
    chunks = b"5\r\n12345\r\n5\r\n67890\r\n5\r\nabcde\r\n0\r\n\r\n"
    head = b"POST /small/c HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
    assert statuses(await exchange(server, head + chunks)) == [413]
    big = head.replace(b"/small/c", b"/big").replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n")
    ok = await exchange(server, big + chunks)
    assert statuses(ok) == [200]
    await released(server)


async def test_route_timeouts_override_the_defaults(recorder, proxy) -> None:
    backend = await recorder()
    routes = (
        '[[routes]]\npath_prefix = "/slow/"\nbackend = "app"\n'
        "timeouts = { upstream_header = 0.3 }\n"
    )
    server = await proxy(config(backend.address, routes=routes))
    assert statuses(await exchange(server, b"GET /slow/x HTTP/1.1\r\nHost: a\r\n\r\n")) == [504]
    got = await exchange(server, b"GET /slowly HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    assert statuses(got) == [200]  # the default route waits the backend's 1 s out


@pytest.mark.single_process  # per-address limits are kept per worker process
async def test_per_address_connection_limit(recorder, proxy, session) -> None:
    backend = await recorder()
    server = await proxy(config(backend.address, proxy="[proxy.limits]\nper_ip_connections = 2\n"))
    held = [await asyncio.open_connection(*server.address("web")) for _ in range(2)]
    await eventually_async(lambda: server.listeners[0].active == 2, 30, "two connections held")
    refused = await exchange(server, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    assert statuses(refused) == [429]
    handshake = await exchange(server, b"GET /ws HTTP/1.1\r\n" + HANDSHAKE)
    assert statuses(handshake) == [429]  # a refused WebSocket handshake
    assert backend.seen == [] and backend.tunnels == []
    for _, writer in held:
        writer.close()
    await released(server)
    ok = await exchange(server, b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    assert statuses(ok) == [200]
    async with session.get(admin_url(server, "/metrics")) as response:
        metrics = await response.text()
    assert 'haproxy_py_per_ip_refused_total{limit="connections"} 2' in metrics


@pytest.mark.single_process  # per-address limits are kept per worker process
async def test_per_address_rate_limit(recorder, proxy, session) -> None:
    backend = await recorder()
    limits = "[proxy.limits]\nper_ip_rate = 0.5\nper_ip_burst = 2\n"
    server = await proxy(config(backend.address, proxy=limits))
    request = b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
    got = [statuses(await exchange(server, request)) for _ in range(3)]
    assert got == [[200], [200], [429]]
    async with session.get(admin_url(server, "/metrics")) as response:
        assert 'haproxy_py_per_ip_refused_total{limit="rate"} 1' in await response.text()
    assert len(backend.seen) == 2


@pytest.mark.single_process
async def test_idle_websocket_that_cannot_flush_is_aborted_once(recorder, proxy) -> None:
    """The sweeper closes an idle tunnel; a close that cannot flush is aborted, and the
    close is logged once, not at every sweep."""
    backend = await recorder()
    idle = "[proxy.timeouts]\nwebsocket_idle = 0.4\nsend = 0.4\n"
    server = await proxy(config(backend.address, proxy=idle))
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(server.address("web"))
    sock.sendall(b"GET /ws HTTP/1.1\r\n" + HANDSHAKE)
    await eventually_async(lambda: len(server.tunnels) == 1, 30, "tunnel open")
    tunnel = next(iter(server.tunnels.open))
    for _ in range(64):  # fill the client's direction until backpressure stops the relay
        tunnel.upstream_half.transport.pause_reading()
        tunnel.client_half.transport.write(b"\x82\x7f" + (65536).to_bytes(8, "big") + bytes(65536))
    with capture_logs() as entries:
        try:
            await eventually_async(lambda: not server.tunnels.open, 30, "the stuck tunnel is gone")
            await asyncio.sleep(0.5)  # a few more sweeps
        finally:
            sock.close()
    assert [e["count"] for e in entries if e["event"] == "idle websockets closed"] == [1]
    await released(server)


async def test_aiohttp_client_still_works_with_limits(recorder, proxy) -> None:
    backend = await recorder()
    limits = "[proxy.limits]\nper_ip_connections = 50\nper_ip_rate = 100\n"
    server = await proxy(config(backend.address, proxy=limits))
    host, port = server.address("web")
    async with aiohttp.ClientSession() as session:
        for i in range(5):
            async with session.get(f"http://{host}:{port}/k{i}") as response:
                assert response.status == 200
    assert backend.paths() == [f"/k{i}" for i in range(5)]


async def test_reload_that_shortens_websocket_idle_applies_within_seconds(recorder, proxy) -> None:
    """The sweeper sleeps at most 5 s, so a reload from an hour to 0.5 s is felt at once."""
    backend = await recorder()
    server = await proxy(config(backend.address))
    reader, writer = await asyncio.open_connection(*server.address("web"))
    writer.write(b"GET /ws HTTP/1.1\r\n" + HANDSHAKE)
    async with asyncio.timeout(30):
        assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 101")
    await asyncio.sleep(0.2)  # let the sweeper start its first (long) sleep
    started = time.monotonic()
    await server.reload(config(backend.address, proxy="[proxy.timeouts]\nwebsocket_idle = 0.5\n"))
    # The tunnel took its timeout when it opened: the old hour. New tunnels get 0.5 s.
    writer.close()
    reader2, writer2 = await asyncio.open_connection(*server.address("web"))
    writer2.write(b"GET /ws HTTP/1.1\r\n" + HANDSHAKE)
    async with asyncio.timeout(30):
        assert (await reader2.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 101")
        assert await reader2.read() == b""  # closed by the sweeper
    writer2.close()
    assert time.monotonic() - started < 8
