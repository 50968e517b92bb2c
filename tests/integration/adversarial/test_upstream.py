"""The backend side: retries, passive health, pooled connections, response framing."""

from __future__ import annotations

import asyncio
import os
import resource

import pytest

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

WARM = b"GET /warm HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"


def request(method: bytes, path: bytes) -> bytes:
    return method + b" " + path + b" HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"


async def pooled(server: ProxyServer) -> None:
    """Leave one idle upstream connection in the pool."""
    assert statuses(await exchange(server, WARM)) == [200]
    backend = server.runtime.backends["app"]
    await eventually_async(lambda: any(backend.idle.values()), 30, "a pooled connection")


@pytest.mark.single_process
@pytest.mark.parametrize(
    ("method", "tries"), [(b"POST", 1), (b"PATCH", 1), (b"GET", 2), (b"DELETE", 2), (b"PUT", 2)]
)
async def test_only_idempotent_requests_are_retried(recorder, proxy, method, tries) -> None:
    """Must hold 8: a pooled connection that closes under a request may be retried once on a
    fresh one, for idempotent methods only (RFC 9110 §9.2.2)."""
    backend = await recorder()
    server = await proxy(config(backend.address))
    await pooled(server)
    got = await exchange(server, request(method, b"/close"))
    assert statuses(got) == [502]
    assert [s.method for s in backend.seen if s.path == "/close"] == [method.decode()] * tries


@pytest.mark.single_process
async def test_no_retry_after_an_invalid_response(recorder, proxy) -> None:
    backend = await recorder()
    server = await proxy(config(backend.address))
    await pooled(server)
    assert statuses(await exchange(server, request(b"GET", b"/garbage"))) == [502]
    assert backend.paths().count("/garbage") == 1


async def test_500s_never_take_the_server_or_node_out(recorder, proxy, session) -> None:
    """Must hold 10: passive health counts transport failures only by default."""
    backend = await recorder()
    server = await proxy(config(backend.address))
    for _ in range(5):
        assert statuses(await exchange(server, request(b"GET", b"/status/500"))) == [500]
    assert server.runtime.backends["app"].servers[0].up
    assert statuses(await exchange(server, request(b"GET", b"/fine"))) == [200]
    async with session.get(admin_url(server, "/healthz")) as response:
        assert response.status == 200


async def test_bytes_after_a_complete_response_close_the_connection(recorder, proxy) -> None:
    backend = await recorder()
    server = await proxy(config(backend.address))
    first = responses(await exchange(server, request(b"GET", b"/extra")))
    assert [(r.status, r.body) for r in first] == [(200, b"ok")]
    second = responses(await exchange(server, request(b"GET", b"/next")))
    assert second[0].body.endswith(b"GET /next") and b"EVIL" not in second[0].body
    assert backend.seen[1].conn != backend.seen[0].conn


async def test_a_repeated_response_head_still_frames_each_body(recorder, proxy) -> None:
    """A backend that sends its last response's head again (only the body differs) is not
    parsed again, yet each answer comes whole and in order with its own body; a new head is
    parsed, and bytes after a response still close the connection."""
    backend = await recorder()
    server = await proxy(config(backend.address))
    paths = (b"/aa", b"/bb", b"/ccc", b"/dd", b"/ee", b"/extra")
    keep = [b"GET %b HTTP/1.1\r\nHost: a\r\n\r\n" % path for path in paths]
    got = responses(await exchange(server, [*keep, request(b"GET", b"/ff")], pause=0.05))
    bodies = [answer.body.split(b" ", 1)[1] for answer in got[:5]]
    assert bodies == [b"r%d GET %b" % (i + 1, path) for i, path in enumerate(paths[:5])]
    assert [(r.status, r.body) for r in got[5:6]] == [(200, b"ok")]
    assert got[6].body.endswith(b" r1 GET /ff")  # on a new connection: EVIL! was not relayed
    assert all(r.complete for r in got) and len(got) == 7


async def test_oversized_response_head_is_502(recorder, proxy) -> None:
    backend = await recorder()
    server = await proxy(config(backend.address))
    assert statuses(await exchange(server, request(b"GET", b"/big-head"))) == [502]


async def test_close_delimited_transfer_coding_is_relayed(recorder, proxy) -> None:
    """`Transfer-Encoding: gzip` (close-delimited) keeps its coding, chunked for the client."""
    backend = await recorder()
    server = await proxy(config(backend.address))
    (answer,) = responses(await exchange(server, request(b"GET", b"/te-gzip")))
    assert answer.complete and answer.body == b"GZIPPED-BYTES"
    assert answer.header("Transfer-Encoding") == ["gzip, chunked"]


async def test_reset_mid_body_is_a_truncation(recorder, proxy) -> None:
    """A reset in a close-delimited body aborts the client: no last chunk hides it."""
    backend = await recorder()
    server = await proxy(config(backend.address))
    (answer,) = responses(await exchange(server, request(b"GET", b"/rst")))
    assert answer.body == b"half-a-body" and not answer.complete


@pytest.mark.single_process  # upstream pools are per worker: the next request may use another
async def test_idle_pooled_connections_expire(recorder, proxy) -> None:
    backend = await recorder()
    server = await proxy(config(backend.address, proxy="[proxy.timeouts]\nupstream_idle = 0.2\n"))
    await exchange(server, request(b"GET", b"/a"))
    await exchange(server, request(b"GET", b"/b"))  # at once: the pooled connection
    await asyncio.sleep(0.5)
    await exchange(server, request(b"GET", b"/c"))  # past upstream_idle: a new one
    assert [s.conn for s in backend.seen] == [1, 1, 2]


async def test_reload_keeps_each_servers_open_count(recorder, proxy) -> None:
    backend = await recorder()
    cfg = config(backend.address)
    server = await proxy(cfg)
    reader, writer = await asyncio.open_connection(*server.address("web"))
    writer.write(b"GET /ws HTTP/1.1\r\n" + HANDSHAKE)
    async with asyncio.timeout(30):
        assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 101")
    await server.reload(cfg)
    (kept,) = server.runtime.backends["app"].servers
    assert kept.load() == 1  # least_conn and max_conns still see the WebSocket
    writer.close()
    await eventually_async(
        lambda: kept.load() == 0, 30, "the tunnel's end is counted on the same server"
    )


@pytest.mark.single_process
async def test_local_connect_errors_never_mark_a_server_down(recorder, proxy) -> None:
    """Out of file descriptors (EMFILE) is this host's problem, not the server's."""
    backend = await recorder()
    server = await proxy(config(backend.address, health="fall = 1"))
    reader, writer = await asyncio.open_connection(*server.address("web"))
    await eventually_async(lambda: server.listeners[0].active == 1, 30, "connection accepted")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    lowest_free = os.dup(0)
    os.close(lowest_free)
    resource.setrlimit(resource.RLIMIT_NOFILE, (lowest_free, hard))  # no new descriptor
    try:
        writer.write(request(b"GET", b"/x"))
        async with asyncio.timeout(30):
            got = await read_until_closed(reader)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        writer.close()
    assert statuses(got) == [502]
    assert server.runtime.backends["app"].servers[0].up
    assert backend.seen == []
