"""PROXY protocol: accepted on listeners (v1, v2, trusted_proxies) and sent to backends."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import ssl
import tomllib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from haproxy_py import pki
from haproxy_py.configfile import ConfigError, Table
from haproxy_py.proxy import proxyproto
from haproxy_py.proxy.accept import trusted
from haproxy_py.proxy.config import parse_proxy
from haproxy_py.proxy.server import ProxyServer
from tests.integration.proxy.raw import no_leak, open_raw, status_of
from tests.integration.proxy.support import access_lines, proxy_config, raw_exchange
from tests.support.wait import eventually_async

PP = '\n[[listeners]]\nname = "lb"\nbind = "127.0.0.1:0"\nproxy_protocol = true\n'
ON = PP + 'trusted_proxies = ["127.0.0.0/8", "::1"]\n'
GET = b"GET /who HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"


async def via_lb(server: ProxyServer, data: bytes) -> bytes:
    host, port = server.address("lb")
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(data)
        async with asyncio.timeout(30):
            return await reader.read(-1)
    except ConnectionResetError:
        return b""  # closed with our bytes unread: the kernel resets instead of a FIN
    finally:
        writer.close()


def echoed(response: bytes) -> dict[str, object]:
    assert status_of(response) == 200, response[:200]
    body = json.loads(response.partition(b"\r\n\r\n")[2])
    assert isinstance(body, dict)
    return body


def forwarded_for(response: bytes) -> object:
    headers = echoed(response)["headers"]
    assert isinstance(headers, dict)
    return headers["x-forwarded-for"]


@pytest.mark.single_process
async def test_v1_and_v2_headers_give_the_client_address(backends, proxy) -> None:
    (b,) = await backends(1)
    server = await proxy(proxy_config({"app": [b.address]}, ON))
    v1 = proxyproto.encode_v1(("198.18.0.7", 5555), ("198.18.0.1", 80))
    with access_lines(server) as entries:
        assert forwarded_for(await via_lb(server, v1 + GET)) == "198.18.0.7"
    assert [e["client"] for e in entries if e.get("event") == "http"] == ["198.18.0.7"]
    v2 = proxyproto.encode_v2(("2001:db8::9", 4444), ("2001:db8::1", 443))
    assert forwarded_for(await via_lb(server, v2 + GET)) == "2001:db8::9"
    local = proxyproto.encode_v2_local()  # a balancer's own health check: the peer stands
    assert forwarded_for(await via_lb(server, local + GET)) == "127.0.0.1"
    # The header may arrive in pieces.
    host, port = server.address("lb")
    reader, writer = await asyncio.open_connection(host, port)
    for piece in (v1[:3], v1[3:20], v1[20:] + GET[:5], GET[5:]):
        writer.write(piece)
        await writer.drain()
    async with asyncio.timeout(30):
        assert forwarded_for(await reader.read(-1)) == "198.18.0.7"
    writer.close()
    # The plain listener beside it takes no header.
    assert forwarded_for(await raw_exchange(server, GET)) == "127.0.0.1"
    await no_leak(server)


async def test_source_hash_uses_the_header_address(backends, proxy) -> None:
    servers = await backends(2)
    server = await proxy(
        proxy_config({"app": [s.address for s in servers]}, ON, balance='"source_hash"')
    )
    seen: dict[str, set[object]] = {}
    for i in range(16):
        source = f"198.18.1.{i}"
        for _ in range(2):
            header = proxyproto.encode_v1((source, 1000 + i), ("198.18.0.1", 80))
            seen.setdefault(source, set()).add(echoed(await via_lb(server, header + GET))["server"])
    assert all(len(picked) == 1 for picked in seen.values())  # each client sticks to one server
    assert len(set().union(*seen.values())) == 2  # and the clients spread (the TCP peer is one)


@pytest.mark.single_process
async def test_missing_or_bad_header_closes_without_an_answer(backends, proxy) -> None:
    (b,) = await backends(1)
    server = await proxy(proxy_config({"app": [b.address]}, ON))
    with capture_logs() as entries:
        assert await via_lb(server, GET) == b""
        assert await via_lb(server, b"PROXY TCP4 1.2.3.4 nonsense\r\n" + GET) == b""
        assert await via_lb(server, b"\r\n\r\n\x00\r\nQUIT\n\x99" + bytes(20)) == b""
    # Each drop is counted; the log gets one line a second at most (a flood must not
    # push the proxy's other lines out of a rate-limited journal).
    reasons = [e["reason"] for e in entries if e.get("event") == "connection dropped"]
    assert len(reasons) == 1 and "no PROXY protocol header" in reasons[0]
    assert server.stats.connections_dropped == 3
    assert b.requests == 0
    await no_leak(server)


async def test_slow_header_is_cut_off(backends, proxy) -> None:
    (b,) = await backends(1)
    server = await proxy(
        proxy_config({"app": [b.address]}, ON + "\n[proxy.timeouts]\nclient_header = 0.3\n")
    )
    assert await via_lb(server, b"PROXY TCP4 ") == b""  # closed after the timeout
    await no_leak(server)


async def test_trusted_proxies_limit_who_may_send_a_header(backends, proxy) -> None:
    (b,) = await backends(1)
    header = proxyproto.encode_v1(("198.18.0.7", 5555), ("198.18.0.1", 80))
    elsewhere = await proxy(
        proxy_config({"app": [b.address]}, PP + 'trusted_proxies = ["198.18.0.0/15"]\n')
    )
    assert await via_lb(elsewhere, header + GET) == b""
    here = await proxy(
        proxy_config({"app": [b.address]}, PP + 'trusted_proxies = ["127.0.0.0/8", "::1"]\n')
    )
    assert forwarded_for(await via_lb(here, header + GET)) == "198.18.0.7"


@contextlib.asynccontextmanager
async def proxy_protocol_backend() -> AsyncIterator[tuple[str, list[proxyproto.ProxyHeader]]]:
    """A backend that requires a PROXY header on each connection and answers each request."""
    headers: list[proxyproto.ProxyHeader] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        data = b""
        with contextlib.suppress(ConnectionError):
            while b"\r\n\r\n" not in data:
                chunk = await reader.read(4096)
                if not chunk:
                    return
                data += chunk
            result = proxyproto.parse(data)
            if isinstance(result, proxyproto.ProxyHeader):
                headers.append(result)
                body = b"with header"
            else:
                body = b"no header"
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
            await writer.drain()
            await reader.read()  # keep-alive: wait for the proxy to close
        writer.close()

    listening = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield f"127.0.0.1:{listening.sockets[0].getsockname()[1]}", headers
    finally:
        listening.close()
        await listening.wait_closed()


async def test_send_proxy_v2_tells_the_backend_who_the_client_is(proxy) -> None:
    async with proxy_protocol_backend() as (address, headers):
        server = await proxy(proxy_config({"app": [address]}, ON, send_proxy='"v2"'))
        reader, writer = await open_raw(server)
        client_port = writer.get_extra_info("sockname")[1]
        for _ in range(2):  # keep-alive: each request gets a connection of its own upstream
            writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            async with asyncio.timeout(30):
                head = await reader.readuntil(b"with header")
            assert status_of(head) == 200
        writer.close()
        assert [(h.version, h.source) for h in headers] == [(2, ("127.0.0.1", client_port))] * 2
        assert headers[0].destination == server.address("web")
        # Behind a balancer the address from its header is what is passed on.
        lb_header = proxyproto.encode_v1(("198.18.0.7", 5555), ("198.18.0.1", 80))
        answer = await via_lb(server, lb_header + GET)
        assert answer.endswith(b"with header")
        assert headers[-1].source == ("198.18.0.7", 5555)
        assert headers[-1].destination == ("198.18.0.1", 80)
        await no_leak(server)


async def test_header_before_tls_handshake(backends, proxy, tmp_path: Path) -> None:
    """The balancer passes TLS through: its PROXY header comes first, then the ClientHello."""
    (b,) = await backends(1)
    pki.init_ca(tmp_path)
    pki.issue(tmp_path, "web", ["web.test"])
    tls = f'tls = {{ cert = "{tmp_path}/web.crt", key = "{tmp_path}/web.key" }}\n'
    server = await proxy(proxy_config({"app": [b.address]}, ON + tls))
    context = ssl.create_default_context(cafile=str(tmp_path / "ca.crt"))
    host, port = server.address("lb")
    for header in (
        proxyproto.encode_v1(("198.18.0.7", 5555), ("198.18.0.1", 443)),
        proxyproto.encode_v2(("198.18.0.8", 5555), ("198.18.0.1", 443)),
    ):
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(header)
        await writer.drain()
        await writer.start_tls(context, server_hostname="web.test")
        writer.write(GET)
        async with asyncio.timeout(30):
            answer = await reader.read(-1)
        writer.close()
        source = proxyproto.parse(header)
        assert isinstance(source, proxyproto.ProxyHeader) and source.source is not None
        headers = echoed(answer)["headers"]
        assert isinstance(headers, dict)
        assert headers["x-forwarded-for"] == source.source[0]
        assert headers["x-forwarded-proto"] == "https"
    # No header: the connection is closed before any TLS.
    assert await via_lb(server, b"\x16\x03\x01\x00\x05hello") == b""
    await no_leak(server)


@pytest.mark.parametrize(
    ("listener_keys", "message"),
    [
        (
            'trusted_proxies = ["198.18.0.0/15"]',
            "listeners[0].trusted_proxies: only used with proxy_protocol = true",
        ),
        (
            'proxy_protocol = true\ntrusted_proxies = ["10.0.0.0/33"]',
            "listeners[0].trusted_proxies[0]: expected an address or network such as",
        ),
        ('proxy_protocol = "yes"', "listeners[0].proxy_protocol: expected true or false"),
        (
            "proxy_protocol = true",
            "listeners[0].trusted_proxies: missing; with proxy_protocol = true name the",
        ),
    ],
)
def test_config_mistakes_are_named(listener_keys: str, message: str) -> None:
    text = (
        f'[[listeners]]\nname = "lb"\nbind = "127.0.0.1:0"\n{listener_keys}\n'
        '[[routes]]\nbackend = "app"\n[backends.app]\nservers = ["127.0.0.1:9"]\n'
    )
    with pytest.raises(ConfigError) as caught:
        parse_proxy(Table(tomllib.loads(text), "node.toml", ""))
    assert str(caught.value).startswith(f"node.toml: {message}")


def test_send_proxy_must_be_v1_or_v2() -> None:
    text = (
        '[[listeners]]\nname = "web"\nbind = "127.0.0.1:0"\n'
        '[[routes]]\nbackend = "app"\n[backends.app]\nservers = ["127.0.0.1:9"]\n'
        'send_proxy = "v3"\n'
    )
    with pytest.raises(ConfigError, match=r"backends\.app\.send_proxy: expected one of v1, v2"):
        parse_proxy(Table(tomllib.loads(text), "node.toml", ""))


def test_trusted_matches_v4_mapped_peers_of_dual_stack_listeners() -> None:
    networks = (ipaddress.ip_network("198.18.0.0/15"), ipaddress.ip_network("2001:db8::/32"))
    assert trusted("198.19.255.1", networks)
    assert trusted("::ffff:198.18.0.9", networks)
    assert trusted("2001:db8::5", networks)
    assert not trusted("127.0.0.1", networks)
    assert not trusted("::ffff:127.0.0.1", networks)
    assert not trusted("127.0.0.1", ())  # nobody: an empty list trusts no one


@pytest.mark.parametrize("version", ["v1", "v2"])
async def test_health_checks_send_a_local_proxy_header(proxy, version: str) -> None:
    """A backend that requires PROXY headers gets one on its checks too (a LOCAL one)."""
    async with proxy_protocol_backend() as (address, headers):
        health = '{ path = "/health", interval = 0.05, fall = 1 }'
        server = await proxy(
            proxy_config({"app": [address]}, send_proxy=f'"{version}"', health=health)
        )
        await eventually_async(lambda: len(headers) >= 3, 30, "three checks arrived")
        assert all(h.source is None for h in headers)  # LOCAL: the proxy's own connection
        assert server.runtime.backends["app"].servers[0].up
