"""HTTP through the proxy: streaming bodies, keep-alive, framing, headers, HTTP/1.0, pipelining."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
from dataclasses import replace
from ipaddress import ip_network

import aiohttp
import pytest

from tests.integration.proxy.support import proxy_config, raw_exchange, url
from tests.support.wait import eventually_async


async def test_get_and_forwarded_headers(backends, proxy, session) -> None:
    """A GET reaches the backend with X-Forwarded-* set and comes back with Via."""
    (b,) = await backends(1)
    server = await proxy(proxy_config({"app": [b.address]}))
    async with session.get(
        url(server, "/a/b?x=1"), headers={"X-Forwarded-For": "203.0.113.7", "Host": "example.com"}
    ) as response:
        assert response.status == 200
        assert response.headers["Via"] == "1.1 node-test"
        seen = await response.json()
    assert seen["path"] == "/a/b?x=1"
    assert seen["headers"]["x-forwarded-for"] == "127.0.0.1"  # the edge: replaced, not appended
    assert seen["headers"]["x-real-ip"] == "127.0.0.1"
    assert seen["headers"]["via"] == "1.1 node-test"
    assert seen["headers"]["x-forwarded-proto"] == "http"
    assert seen["headers"]["x-forwarded-host"] == "example.com"
    assert seen["headers"]["host"] == "example.com"


async def test_forwarded_for_appended_for_a_trusted_proxy(backends, proxy, session) -> None:
    """A client in `forwarded_for_trusted` is a proxy in front: its list is kept."""
    (b,) = await backends(1)
    config = proxy_config({"app": [b.address]})
    trusting = replace(config.listeners[0], forwarded_for_trusted=(ip_network("127.0.0.0/8"),))
    server = await proxy(replace(config, listeners=(trusting,)))
    async with session.get(url(server, "/"), headers={"X-Forwarded-For": "203.0.113.7"}) as r:
        seen = await r.json()
    assert seen["headers"]["x-forwarded-for"] == "203.0.113.7, 127.0.0.1"


async def test_hop_by_hop_request_headers_stripped(backends, proxy) -> None:
    """Connection, Keep-Alive, TE, Proxy-Connection and headers named in Connection stay here."""
    (b,) = await backends(1)
    server = await proxy(proxy_config({"app": [b.address]}))
    raw = await raw_exchange(
        server,
        b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close, X-Secret\r\nX-Secret: 1\r\n"
        b"Keep-Alive: timeout=5\r\nTE: trailers\r\nProxy-Connection: keep-alive\r\n"
        b"X-Kept: 2\r\n\r\n",
    )
    seen = json.loads(raw.split(b"\r\n\r\n", 1)[1])
    headers = seen["headers"]
    for name in ("x-secret", "keep-alive", "te", "proxy-connection"):
        assert name not in headers
    assert headers["x-kept"] == "2"


async def test_hop_by_hop_response_headers_stripped(backends, proxy, session) -> None:
    (b,) = await backends(1)
    server = await proxy(proxy_config({"app": [b.address]}))
    async with session.get(url(server, "/hop")) as response:
        assert response.status == 200
        assert response.headers["X-Public"] == "yes"
        assert "X-Internal" not in response.headers
        assert "Keep-Alive" not in response.headers


async def test_post_streams_large_body(backends, proxy, session) -> None:
    """A 20 MiB upload sent in chunks arrives whole (Content-Length and chunked)."""
    (b,) = await backends(1)
    server = await proxy(proxy_config({"app": [b.address]}))
    blob = os.urandom(1 << 20)

    async def chunks():
        for _ in range(20):
            yield blob

    digest = hashlib.sha256(blob * 20).hexdigest()
    async with session.post(url(server, "/upload"), data=chunks()) as response:  # chunked
        seen = await response.json()
    assert (seen["body_size"], seen["body_sha256"]) == (20 << 20, digest)
    async with session.post(url(server, "/upload"), data=blob * 20) as response:  # length
        seen = await response.json()
    assert (seen["body_size"], seen["body_sha256"]) == (20 << 20, digest)


async def test_streamed_response_arrives_in_order(backends, proxy, session) -> None:
    """A chunked response of 200 x 64 KiB is relayed without being collected first."""
    (b,) = await backends(1)
    server = await proxy(proxy_config({"app": [b.address]}))
    async with session.get(url(server, "/stream?n=200&size=65536")) as response:
        assert response.headers.get("Transfer-Encoding") == "chunked"
        body = await response.read()
    assert len(body) == 200 * 65536
    assert body[:65536] == b"A" * 65536 and body[-65536:] == bytes([65 + 199 % 26]) * 65536


@pytest.mark.single_process
async def test_keep_alive_reuses_both_connections(backends, proxy, session) -> None:
    """Many requests on one client connection use one pooled backend connection."""
    (b,) = await backends(1)
    server = await proxy(proxy_config({"app": [b.address]}))
    for _ in range(50):
        async with session.get(url(server, "/k")) as response:
            assert response.status == 200
            await response.read()
    assert server.stats.connections_total == 1
    backend = server.runtime.backends["app"]
    assert len(backend.idle[backend.servers[0]]) == 1


async def test_http10_client(backends, proxy) -> None:
    """An HTTP/1.0 client gets a close-delimited or sized answer, then the connection closes."""
    (b,) = await backends(1)
    server = await proxy(proxy_config({"app": [b.address]}))
    raw = await raw_exchange(server, b"GET /ten HTTP/1.0\r\n\r\n")
    head, body = raw.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 200 OK")
    assert b"Transfer-Encoding" not in head
    assert json.loads(body)["path"] == "/ten"
    raw = await raw_exchange(server, b"GET /stream?n=3&size=10 HTTP/1.0\r\n\r\n")
    head, body = raw.split(b"\r\n\r\n", 1)
    assert b"Transfer-Encoding" not in head and b"Connection: close" in head
    assert body == b"A" * 10 + b"B" * 10 + b"C" * 10


async def test_pipelined_requests_answered_in_order(backends, proxy) -> None:
    """Three requests sent at once get three answers in order on the same connection."""
    (b,) = await backends(1)
    server = await proxy(proxy_config({"app": [b.address]}))
    raw = await raw_exchange(
        server,
        b"GET /1 HTTP/1.1\r\nHost: x\r\n\r\n"
        b"POST /2 HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"
        b"GET /3 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    positions = [raw.find(b'"path": "/%d"' % i) for i in (1, 2, 3)]
    assert -1 not in positions and positions == sorted(positions)
    assert raw.count(b"HTTP/1.1 200 OK") == 3


async def test_each_keep_alive_request_reaches_the_backend_with_its_own_headers(
    backends, proxy
) -> None:
    """A client that repeats its headers reuses the last request's facts and head; one that
    changes a header, the path or the Host gets them anew."""
    (b,) = await backends(1)
    server = await proxy(proxy_config({"app": [b.address]}))
    raw = await raw_exchange(
        server,
        b"GET /1 HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n\r\n"
        b"GET /1 HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n\r\n"
        b"GET /1 HTTP/1.1\r\nHost: x\r\nX-A: 2\r\n\r\n"
        b"GET /2 HTTP/1.1\r\nHost: x\r\nX-A: 2\r\n\r\n"
        b"GET /2 HTTP/1.1\r\nHost: y\r\nX-A: 2\r\nConnection: close\r\n\r\n",
    )
    seen = [json.loads(part.split(b"\r\n\r\n", 1)[1]) for part in _answers(raw)]
    got = [(s["path"], s["headers"]["host"], s["headers"]["x-a"]) for s in seen]
    expected = [("/1", "x", "1"), ("/1", "x", "1"), ("/1", "x", "2"), ("/2", "x", "2")]
    assert got == [*expected, ("/2", "y", "2")]


async def test_the_same_request_again_is_served_as_the_config_now_says(backends, proxy) -> None:
    """A keep-alive client that sends the same bytes again skips their parse, not the config:
    after a reload the same request goes where the new config routes it, and is held to its
    limits; the same bytes in two reads, or followed by a second request, are answered in
    order."""
    b0, b1 = await backends(2)
    server = await proxy(proxy_config({"app": [b0.address], "api": [b1.address]}))
    reader, writer = await asyncio.open_connection(*server.address("web"))
    request = b"GET /same?%b HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n\r\n" % (b"q" * 300)

    async def answers(*reads: bytes, count: int = 1) -> list[str]:
        for data in reads:
            writer.write(data)
            await writer.drain()
            await asyncio.sleep(0.05)  # each its own read on the proxy's side
        got = []
        async with asyncio.timeout(30):
            for _ in range(count):
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(head.lower().split(b"content-length: ", 1)[1].split(b"\r\n", 1)[0])
                seen = json.loads(await reader.readexactly(length))
                got.append(f"{seen['server']} {seen['path'][:5]} {seen['headers']['x-a']}")
        return got

    try:
        assert await answers(request) == ["b0 /same 1"]
        assert await answers(request) == ["b0 /same 1"]
        await server.reload(proxy_config({"api": [b1.address], "app": [b0.address]}))
        assert await answers(request) == ["b1 /same 1"]
        assert await answers(request) == ["b1 /same 1"]
        assert await answers(request[:20], request[20:]) == ["b1 /same 1"]
        other = request.replace(b"X-A: 1", b"X-A: 2")
        assert await answers(request + other, count=2) == ["b1 /same 1", "b1 /same 2"]
        assert await answers(request) == ["b1 /same 1"]
        # Its checks are made again under a new config: now its target is too long.
        limited = "[proxy.limits]\nmax_uri_size = 256\n"
        await server.reload(proxy_config({"app": [b0.address]}, extra=limited))
        writer.write(request)
        async with asyncio.timeout(30):
            assert (await reader.read(-1)).startswith(b"HTTP/1.1 414 ")
    finally:
        writer.close()


def _answers(raw: bytes) -> list[bytes]:
    """Split keep-alive answers (each framed by Content-Length) into head and body."""
    out = []
    while raw:
        head, _, rest = raw.partition(b"\r\n\r\n")
        length = int(head.lower().split(b"content-length: ", 1)[1].split(b"\r\n", 1)[0])
        out.append(head + b"\r\n\r\n" + rest[:length])
        raw = rest[length:]
    return out


async def test_head_request(backends, proxy) -> None:
    """HEAD gets the head only and the connection stays usable."""
    (b,) = await backends(1)
    server = await proxy(proxy_config({"app": [b.address]}))
    raw = await raw_exchange(
        server,
        b"HEAD /h HTTP/1.1\r\nHost: x\r\n\r\n"
        b"GET /after HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    assert raw.count(b"HTTP/1.1 200 OK") == 2
    assert raw.endswith(b"}")  # the GET's JSON body, and nothing between the two heads
    assert b'"path": "/after"' in raw


async def test_routes_by_prefix(backends, proxy, session) -> None:
    b0, b1 = await backends(2)
    server = await proxy(proxy_config({"app": [b0.address], "api": [b1.address]}))
    async with session.get(url(server, "/api/x")) as response:
        assert (await response.json())["server"] == "b1"
    async with session.get(url(server, "/other")) as response:
        assert (await response.json())["server"] == "b0"


async def test_no_route_is_404(backends, proxy) -> None:
    (b,) = await backends(1)
    server = await proxy(proxy_config({"app": [b.address]}, route_host="only.example.com"))
    raw = await raw_exchange(server, b"GET / HTTP/1.1\r\nHost: other.example.com\r\n\r\n")
    assert raw.startswith(b"HTTP/1.1 404 ")
    assert b"no route" in raw
    raw = await raw_exchange(
        server, b"GET / HTTP/1.1\r\nHost: only.example.com:80\r\nConnection: close\r\n\r\n"
    )
    assert raw.startswith(b"HTTP/1.1 200 ")


async def test_malformed_request_is_400(backends, proxy) -> None:
    (b,) = await backends(1)
    server = await proxy(proxy_config({"app": [b.address]}))
    raw = await raw_exchange(server, b"GARBAGE\x00\r\n\r\n")
    assert raw.startswith(b"HTTP/1.1 400 ")
    assert b"Traceback" not in raw


async def test_aiohttp_client_sees_exact_bytes(backends, proxy) -> None:
    """Binary response bodies pass byte for byte (no re-encoding)."""
    (b,) = await backends(1)
    server = await proxy(proxy_config({"app": [b.address]}))
    async with (
        aiohttp.ClientSession(auto_decompress=False) as s,
        s.get(url(server, "/stream?n=26&size=4096")) as response,
    ):
        body = await response.read()
    assert body == b"".join(bytes([65 + i]) * 4096 for i in range(26))


async def test_response_is_streamed_not_collected(backends, proxy, session) -> None:
    """The client gets the first chunk while the backend is still holding the rest."""
    (b,) = await backends(1)
    server = await proxy(proxy_config({"app": [b.address]}))
    async with session.get(url(server, "/gated")) as response:
        assert await response.content.readexactly(6) == b"first;"
        b.gate.set()
        assert await response.content.read() == b"second"


async def test_request_is_streamed_not_collected(backends, proxy, session) -> None:
    """The backend gets the first body bytes while the client is still sending."""
    (b,) = await backends(1)
    server = await proxy(proxy_config({"app": [b.address]}))
    client_may_finish = asyncio.Event()

    async def body():
        yield b"x" * 1000
        await client_may_finish.wait()
        yield b"y" * 1000

    async def watch() -> None:
        await b.first_chunk.wait()
        client_may_finish.set()

    watcher = asyncio.create_task(watch())
    async with session.post(url(server, "/gated-upload"), data=body()) as response:
        assert await response.text() == "2000"
    await watcher


async def test_idle_keep_alive_closed(backends, proxy) -> None:
    """A keep-alive connection with no request for http_idle is closed by the proxy."""
    (b,) = await backends(1)
    server = await proxy(
        proxy_config({"app": [b.address]}, extra="[proxy.timeouts]\nhttp_idle = 0.3\n")
    )
    raw = await raw_exchange(server, b"GET /x HTTP/1.1\r\nHost: x\r\n\r\n")
    assert raw.startswith(b"HTTP/1.1 200 OK")  # and then the proxy closed the idle connection


async def test_slow_request_head_gets_408(backends, proxy) -> None:
    (b,) = await backends(1)
    server = await proxy(
        proxy_config({"app": [b.address]}, extra="[proxy.timeouts]\nclient_header = 0.3\n")
    )
    raw = await raw_exchange(server, b"GET /x HTTP/1.1\r\nHost: x\r\n")
    assert raw.startswith(b"HTTP/1.1 408 ")


@pytest.mark.single_process
async def test_connection_limit_answers_503(backends, proxy, session) -> None:
    (b,) = await backends(1)
    server = await proxy(
        proxy_config({"app": [b.address]}, extra="[proxy.limits]\nmax_connections = 1\n")
    )
    async with session.ws_connect(url(server, "/ws")) as ws:
        raw = await raw_exchange(server, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert raw.startswith(b"HTTP/1.1 503 ")
        await ws.send_str("still fine")
        assert await ws.receive_str() == "still fine"
    assert server.stats.connections_refused == 1


async def test_expect_100_continue(backends, proxy) -> None:
    """An Expect: 100-continue upload gets the backend's 100 before sending its body."""
    (b,) = await backends(1)
    server = await proxy(proxy_config({"app": [b.address]}))
    host, port = server.address("web")
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(
            b"POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n"
            b"Connection: close\r\n\r\n"
        )
        async with asyncio.timeout(30):
            interim = await reader.readuntil(b"\r\n\r\n")
            assert interim.startswith(b"HTTP/1.1 100 Continue")
            writer.write(b"hello")
            rest = await reader.read(-1)
    finally:
        writer.close()
    assert rest.startswith(b"HTTP/1.1 200 OK")
    assert b'"body_size": 5' in rest


@pytest.mark.single_process
async def test_slow_reader_backpressure_bounds_buffering(backends, proxy) -> None:
    """A client that stops reading a 50 MiB response makes the proxy stop reading the backend."""
    (b,) = await backends(1)
    server = await proxy(proxy_config({"app": [b.address]}))
    host, port = server.address("web")
    reader, writer = await asyncio.open_connection(host, port, limit=1 << 16)
    try:
        writer.transport.pause_reading()
        writer.write(
            b"GET /stream?n=800&size=65536 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        await eventually_async(lambda: server.listeners[0].connections, 30, "request accepted")
        (conn,) = server.listeners[0].connections
        await eventually_async(lambda: conn.bytes_out > 1 << 20, 30, "response started")
        previous = -1
        for _ in range(300):  # until the relay stalls (30 s at most)
            if conn.bytes_out == previous:
                break
            previous = conn.bytes_out
            await asyncio.sleep(0.1)
        assert conn.bytes_out < 16 << 20
        assert conn.transport.get_write_buffer_size() < 4 << 20
        writer.transport.resume_reading()
        async with asyncio.timeout(60):
            received = len(await reader.read(-1))
    finally:
        writer.close()
    assert received > 800 * 65536  # the body (chunked) plus the head


async def test_absolute_form_target_keeps_query(backends, proxy) -> None:
    """`GET http://host/path?q` is forwarded as `/path?q` and routed by its host."""
    (b,) = await backends(1)
    server = await proxy(proxy_config({"app": [b.address]}, route_host="example.com"))
    raw = await raw_exchange(
        server,
        b"GET http://example.com/p?q=1 HTTP/1.1\r\nHost: other\r\nConnection: close\r\n\r\n",
    )
    assert raw.startswith(b"HTTP/1.1 200 OK")
    assert b'"path": "/p?q=1"' in raw


async def test_options_asterisk(backends, proxy) -> None:
    """`OPTIONS *` is routed like "/" and forwarded as it is."""
    (b,) = await backends(1)
    server = await proxy(proxy_config({"app": [b.address]}))
    raw = await raw_exchange(server, b"OPTIONS * HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert b"aiohttp" in raw.split(b"\r\n\r\n")[0]  # answered by the backend, not the proxy
    assert b"no route" not in raw and b"bad request" not in raw


async def _dispatched(server) -> None:
    """Wait until the first request of the test is with the backend."""
    backend = server.runtime.backends["app"]
    await eventually_async(
        lambda: backend.servers[0].load() == 1, 30, "request sent to the backend"
    )


async def test_request_pipelined_while_the_first_is_answered(backends, proxy) -> None:
    """A request that arrives while the previous response is pending waits for it, in order."""
    (b,) = await backends(1)
    server = await proxy(proxy_config({"app": [b.address]}))
    reader, writer = await asyncio.open_connection(*server.address("web"))
    try:
        writer.write(b"GET /slow?delay=0.3 HTTP/1.1\r\nHost: x\r\n\r\n")
        await _dispatched(server)
        writer.write(b"GET /second HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        async with asyncio.timeout(30):
            raw = await reader.read(-1)
    finally:
        writer.close()
    assert raw.count(b"HTTP/1.1 200 OK") == 2
    assert raw.find(b"late") < raw.find(b'"path": "/second"')


async def test_garbage_after_a_request_waits_for_its_response(backends, proxy) -> None:
    """Unparsable bytes behind a request in flight get their 400 after its response."""
    (b,) = await backends(1)
    server = await proxy(proxy_config({"app": [b.address]}))
    reader, writer = await asyncio.open_connection(*server.address("web"))
    try:
        writer.write(b"GET /slow?delay=0.3 HTTP/1.1\r\nHost: x\r\n\r\n")
        await _dispatched(server)
        writer.write(b"\x00\x01 not http\r\n\r\n")
        async with asyncio.timeout(30):
            raw = await reader.read(-1)
    finally:
        writer.close()
    first, _, rest = raw.partition(b"late")
    assert first.startswith(b"HTTP/1.1 200 OK")
    assert rest.startswith(b"HTTP/1.1 400 ")


async def test_keep_alive_outlives_each_timeout_while_busy(backends, proxy) -> None:
    """Deadlines move with each request: a connection busier than its timeouts stays open."""
    (b,) = await backends(1)
    server = await proxy(
        proxy_config(
            {"app": [b.address]},
            extra="[proxy.timeouts]\nclient_header = 2\nhttp_idle = 2\n",
        )
    )
    reader, writer = await asyncio.open_connection(*server.address("web"))
    try:
        for i in range(4):  # 4 x 1.2 s between requests: past every timeout, never one gap
            writer.write(b"GET /n%d HTTP/1.1\r\nHost: x\r\n\r\n" % i)
            async with asyncio.timeout(30):
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
                body = await reader.readexactly(length)
            assert head.startswith(b"HTTP/1.1 200 OK") and b"/n%d" % i in body
            await asyncio.sleep(1.2)  # the idle gap under test, not a synchronisation
    finally:
        writer.close()
