"""Request smuggling and response desync: raw bytes in, what the backend parsed and what
each client read out. The backend frames requests exactly as the proxy's head says, so a
request the proxy let through unframed appears there as an extra request."""

from __future__ import annotations

import asyncio

import pytest

from tests.integration.adversarial.client import (
    HANDSHAKE,
    KEY,
    config,
    exchange,
    responses,
    statuses,
)
from tests.support.wait import eventually_async

SMUGGLED = b"GET /smuggled-admin HTTP/1.1\r\nHost: internal\r\nX-Forwarded-For: 127.0.0.1\r\n\r\n"


@pytest.mark.parametrize(
    "connection",
    [b"keep-alive, Content-Length", b"Content-Length", b"close, content-length, host"],
)
async def test_connection_cannot_strip_content_length(recorder, proxy, connection) -> None:
    """Must hold 1: the body stays the body; the backend sees one request with its length."""
    backend = await recorder()
    server = await proxy(config(backend.address))
    request = (
        b"POST /public HTTP/1.1\r\nHost: a.example\r\nConnection: " + connection + b"\r\n"
        b"Content-Length: %d\r\n\r\n" % len(SMUGGLED) + SMUGGLED
    )
    after = b"GET /after HTTP/1.1\r\nHost: a.example\r\nConnection: close\r\n\r\n"
    got = await exchange(server, request + after)
    answered = responses(got)
    assert backend.paths() == ["/public"] + ([] if b"close" in connection else ["/after"])
    post = backend.seen[0]
    assert post.body == SMUGGLED
    assert post.header("Content-Length") == [str(len(SMUGGLED))]
    assert post.header("Host") == ["a.example"]
    assert answered[0].body.endswith(b"POST /public")
    assert len(answered) == len(backend.seen)


async def test_connection_cannot_strip_transfer_encoding(recorder, proxy) -> None:
    backend = await recorder()
    server = await proxy(config(backend.address))
    chunked = b"%x\r\n%b\r\n0\r\n\r\n" % (len(SMUGGLED), SMUGGLED)
    request = (
        b"POST /public HTTP/1.1\r\nHost: a\r\nConnection: Transfer-Encoding, close\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n" + chunked
    )
    got = await exchange(server, request)
    assert backend.paths() == ["/public"]
    assert backend.seen[0].body == SMUGGLED
    assert statuses(got) == [200]


async def test_victim_never_reads_the_attackers_response(recorder, proxy) -> None:
    """The review's poisoning scenario: a smuggled slow request must not take the victim's
    place on the pooled connection."""
    backend = await recorder()
    server = await proxy(config(backend.address))
    slow = b"GET /slow/attacker-chosen HTTP/1.1\r\nHost: a\r\n\r\n"
    attack = (
        b"POST /public HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, Content-Length\r\n"
        b"Content-Length: %d\r\n\r\n" % len(slow) + slow
    )
    attacker = asyncio.create_task(exchange(server, attack + b"GET /x HTTP/1.1\r\nHost: a\r\n"))
    await asyncio.sleep(0.3)
    victim = await exchange(
        server, b"GET /victim/private HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
    )
    attacker.cancel()
    (answer,) = responses(victim)
    assert answer.body.endswith(b"GET /victim/private")
    assert "/slow/attacker-chosen" not in backend.paths()


async def test_response_connection_cannot_unframe_a_response(recorder, proxy) -> None:
    """`Connection: Content-Length` from a backend keeps the response framed (keep-alive)."""
    backend = await recorder()
    server = await proxy(config(backend.address))
    got = await exchange(
        server,
        b"GET /conn-cl HTTP/1.1\r\nHost: a\r\n\r\nGET /next HTTP/1.1\r\nHost: a\r\n"
        b"Connection: close\r\n\r\n",
    )
    first, second = responses(got)
    assert first.header("Content-Length") == ["5"] and first.body == b"hello"
    assert second.body.endswith(b"GET /next")


async def test_refused_upgrade_never_poisons_a_connection(recorder, proxy) -> None:
    """Must hold 2: bytes after a handshake wait for the 101; after a 403 they never reach
    the backend, and the upstream connection is not reused."""
    backend = await recorder()
    server = await proxy(config(backend.address))
    got = await exchange(server, b"GET /ws/refuse HTTP/1.1\r\n" + HANDSHAKE + SMUGGLED)
    assert statuses(got) == [403]
    assert backend.paths() == ["/ws/refuse"]
    later = await exchange(server, b"GET /later HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    assert backend.paths() == ["/ws/refuse", "/later"]
    assert backend.seen[1].conn != backend.seen[0].conn
    assert responses(later)[0].body.endswith(b"GET /later")


async def test_accepted_upgrade_delivers_early_bytes_after_the_101(recorder, proxy) -> None:
    backend = await recorder()
    server = await proxy(config(backend.address))
    frame = b"\x81\x85abcd" + bytes(b ^ b"abcd"[i % 4] for i, b in enumerate(b"hello"))
    reader, writer = await asyncio.open_connection(*server.address("web"))
    writer.write(b"GET /ws HTTP/1.1\r\n" + HANDSHAKE + frame)
    async with asyncio.timeout(30):
        head = await reader.readuntil(b"\r\n\r\n")
    await eventually_async(
        lambda: bool(backend.tunnels) and len(backend.tunnels[0].received) >= len(frame),
        30,
        "the early frame reached the backend",
    )
    writer.close()
    assert head.startswith(b"HTTP/1.1 101")
    assert bytes(backend.tunnels[0].received) == frame


@pytest.mark.parametrize(
    "body",
    [
        b"Content-Length: 5\r\n\r\nhello",
        b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    ],
)
async def test_h2c_upgrade_with_a_body_is_501(recorder, proxy, body) -> None:
    """Must hold 3: llhttp would end the message at the head and drop the body."""
    backend = await recorder()
    server = await proxy(config(backend.address))
    got = await exchange(
        server,
        b"POST /a HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n" + body + SMUGGLED,
    )
    assert statuses(got) == [501]
    assert backend.seen == []


async def test_h2c_upgrade_without_body_is_served_plain_and_not_pooled(recorder, proxy) -> None:
    backend = await recorder()
    server = await proxy(config(backend.address))
    got = await exchange(
        server,
        b"GET /a HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
        b"HTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n\r\n" + SMUGGLED,
    )
    assert statuses(got) == [200]
    await exchange(server, b"GET /b HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    assert backend.paths() == ["/a", "/b"]
    assert backend.seen[0].header("Upgrade") == []
    assert backend.seen[1].conn != backend.seen[0].conn


async def test_upgrade_token_is_a_token_not_a_substring(recorder, proxy) -> None:
    backend = await recorder()
    server = await proxy(config(backend.address))
    got = await exchange(
        server, b"GET /plain HTTP/1.1\r\n" + HANDSHAKE.replace(b"websocket", b"notwebsocket")
    )
    assert statuses(got) == [200]  # served as a plain GET, the Upgrade dropped
    assert backend.seen[0].header("Upgrade") == []
    assert backend.seen[0].header("Sec-WebSocket-Key") == [KEY.decode()]


@pytest.mark.parametrize(
    ("head", "status"),
    [
        (b"GET / HTTP/1.1\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: a.example/x y\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: a@b\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", 501),
        (b"GET / HTTP/1.1\r\nHost: a\r\nVia: 1.1 node-test\r\n\r\n", 508),
    ],
    ids=["no-host", "two-hosts", "bad-host", "userinfo-host", "te-gzip", "via-loop"],
)
async def test_bad_heads_never_reach_the_backend(recorder, proxy, head, status) -> None:
    backend = await recorder()
    server = await proxy(config(backend.address))
    assert statuses(await exchange(server, head)) == [status]
    assert backend.seen == []


async def test_http10_without_host_is_fine(recorder, proxy) -> None:
    backend = await recorder()
    server = await proxy(config(backend.address))
    assert statuses(await exchange(server, b"GET /old HTTP/1.0\r\n\r\n")) == [200]
    assert backend.seen[0].header("Host") == [backend.address]


async def test_absolute_form_authority_replaces_host(recorder, proxy) -> None:
    """RFC 9112 §3.2.2: routing and the backend both see the URI's authority."""
    backend = await recorder()
    other = await recorder()
    routes = '[[routes]]\nhost = "a.example"\nbackend = "a"\n'
    routes += f'[backends.a]\nservers = ["{other.address}"]\n'
    server = await proxy(config(backend.address, proxy=routes))
    got = await exchange(
        server,
        b"GET http://a.example:8080/abs?q HTTP/1.1\r\nHost: b.example\r\nConnection: close\r\n\r\n",
    )
    assert statuses(got) == [200]
    assert backend.seen == []
    (seen,) = other.seen
    assert seen.path == "/abs?q"
    assert seen.header("Host") == ["a.example:8080"]
