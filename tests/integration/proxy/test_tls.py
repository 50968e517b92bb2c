"""TLS end to end: wss:// through a TLS listener (SNI), TLS to backends, reload, check-config."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import ssl
import tomllib
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from click.testing import CliRunner
from cryptography import x509
from cryptography.x509.oid import NameOID

from haproxy_py import pki
from haproxy_py.configfile import Table
from haproxy_py.proxy.cli import main
from haproxy_py.proxy.config import ProxyConfig, parse_proxy
from tests.integration.proxy.raw import no_leak
from tests.integration.proxy.support import Backend
from tests.support.certs import make_cert


@pytest.fixture
def certs(tmp_path: Path) -> Path:
    pki.init_ca(tmp_path)
    pki.issue(tmp_path, "a", ["a.test"])
    pki.issue(tmp_path, "b", ["b.test"])
    pki.issue(tmp_path, "a2", ["a.test"])
    pki.issue(tmp_path, "backend", ["backend.test"])
    return tmp_path


def config_text(
    certs: Path, backend: str, listener_certs: list[str], backend_keys: str = ""
) -> str:
    tls = ", ".join(
        f'{{ cert = "{certs}/{n}.crt", key = "{certs}/{n}.key" }}' for n in listener_certs
    )
    return (
        '[admin]\nbind = "127.0.0.1:0"\n\n'
        f'[[listeners]]\nname = "web"\nbind = "127.0.0.1:0"\ntls = [{tls}]\n\n'
        '[[routes]]\nbackend = "app"\n\n'
        f'[backends.app]\nservers = ["{backend}"]\n{backend_keys}'
    )


def parse(text: str) -> ProxyConfig:
    return parse_proxy(Table(tomllib.loads(text), "test.toml", ""))


def client_context(certs: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(certs / "ca.crt"))


def peer_name(transport: object) -> str:
    ssl_object = transport.get_extra_info("ssl_object")
    cert = x509.load_der_x509_certificate(ssl_object.getpeercert(binary_form=True))
    return str(cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)


@pytest.fixture
async def tls_backend(certs: Path) -> AsyncIterator[tuple[Backend, str]]:
    """The usual test backend, served over TLS with a certificate for backend.test."""
    backend = Backend("tls-backend")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(certs / "backend.crt", certs / "backend.key")
    runner = web.AppRunner(backend.app, access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
    await site.start()
    try:
        yield backend, f"127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


async def test_wss_end_to_end_with_sni(backends, proxy, certs: Path) -> None:
    (b,) = await backends(1)
    server = await proxy(parse(config_text(certs, b.address, ["a", "b"])))
    host, port = server.address("web")
    connector = aiohttp.TCPConnector(ssl=client_context(certs))
    async with aiohttp.ClientSession(connector=connector) as session:
        for name, expected in (("a.test", "a"), ("b.test", "b")):
            ws = await session.ws_connect(f"wss://{host}:{port}/ws", server_hostname=name)
            assert peer_name(ws._response.connection.transport) == expected
            await ws.send_bytes(b"\x00" * 100_000)
            assert (await ws.receive(timeout=30)).data == b"\x00" * 100_000
            await ws.close()
        async with session.get(f"https://{host}:{port}/p", server_hostname="a.test") as response:
            headers = (await response.json())["headers"]
        assert headers["x-forwarded-proto"] == "https"
    await no_leak(server)


async def test_plain_http_to_a_tls_listener_is_closed(backends, proxy, certs: Path) -> None:
    (b,) = await backends(1)
    server = await proxy(parse(config_text(certs, b.address, ["a"])))
    host, port = server.address("web")
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    async with asyncio.timeout(30):
        answer = await reader.read(-1)
    writer.close()
    assert b"200" not in answer
    assert b.requests == 0
    await no_leak(server)


async def test_tls_to_the_backend_with_verification(proxy, certs: Path, tls_backend) -> None:
    backend, address = tls_backend
    keys = f'tls = true\ntls_ca = "{certs}/ca.crt"\ntls_server_name = "backend.test"\n'
    server = await proxy(parse(config_text(certs, address, ["a"], keys)))
    host, port = server.address("web")
    connector = aiohttp.TCPConnector(ssl=client_context(certs))
    async with aiohttp.ClientSession(connector=connector) as session:
        async with session.get(f"https://{host}:{port}/x", server_hostname="a.test") as response:
            assert (await response.json())["server"] == "tls-backend"
        ws = await session.ws_connect(f"wss://{host}:{port}/ws", server_hostname="a.test")
        await ws.send_str("over two TLS hops")
        assert (await ws.receive(timeout=30)).data == "over two TLS hops"
        await ws.close()
    # A name the backend's certificate does not carry fails verification: 502, never plain.
    wrong = f'tls = true\ntls_ca = "{certs}/ca.crt"\ntls_server_name = "other.test"\n'
    strict = await proxy(parse(config_text(certs, address, ["a"], wrong)))
    host, port = strict.address("web")
    async with (
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=client_context(certs))) as s,
        s.get(f"https://{host}:{port}/x", server_hostname="a.test") as response,
    ):
        assert response.status == 502
    assert backend.requests == 1


async def test_reload_swaps_certificates_and_keeps_connections(
    backends, proxy, certs: Path
) -> None:
    (b,) = await backends(1)
    server = await proxy(parse(config_text(certs, b.address, ["a"])))
    host, port = server.address("web")
    context = client_context(certs)
    reader, writer = await asyncio.open_connection(
        host, port, ssl=context, server_hostname="a.test"
    )
    assert peer_name(writer.transport) == "a"
    await server.reload(parse(config_text(certs, b.address, ["a2"])))
    assert server.address("web") == (host, port)
    _, new_writer = await asyncio.open_connection(host, port, ssl=context, server_hostname="a.test")
    assert peer_name(new_writer.transport) == "a2"
    new_writer.close()
    # The connection from before the reload still serves requests.
    writer.write(b"GET /old HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n")
    async with asyncio.timeout(30):
        answer = await reader.read(-1)
    assert answer.startswith(b"HTTP/1.1 200")
    assert json.loads(answer.partition(b"\r\n\r\n")[2])["path"] == "/old"
    writer.close()


@pytest.mark.asyncio(loop_factories=["asyncio"])
@pytest.mark.parametrize("problem", ["missing", "mismatch", "expired"])
async def test_check_config_names_the_file_and_the_problem(
    certs: Path, tmp_path: Path, problem: str
) -> None:
    cert, key = certs / "a.crt", certs / "a.key"
    if problem == "missing":
        cert = certs / "gone.crt"
        expected = f"{cert}: no such file"
    elif problem == "mismatch":
        key = certs / "b.key"
        expected = f"{key}: this key does not belong to the certificate {cert}"
    else:
        now = dt.datetime.now(dt.UTC)
        cert, key = make_cert(tmp_path, "old", not_before=now - dt.timedelta(days=9), not_after=now)
        expected = f"{cert}: expired on"
    config = tmp_path / "node.toml"
    config.write_text(
        '[[listeners]]\nname = "web"\nbind = "127.0.0.1:0"\n'
        f'tls = {{ cert = "{cert}", key = "{key}" }}\n'
        '[[routes]]\nbackend = "app"\n[backends.app]\nservers = ["127.0.0.1:9"]\n'
    )
    result = CliRunner().invoke(main, ["check-config", str(config)])
    assert result.exit_code == 2
    assert result.output.startswith(f"haproxy-py: {config}: listeners[0].tls.")
    assert expected in result.output
    assert "Traceback" not in result.output


async def test_silent_client_is_cut_off_before_the_handshake(backends, proxy, certs: Path) -> None:
    (b,) = await backends(1)
    text = config_text(certs, b.address, ["a"]) + "\n[proxy.timeouts]\nclient_header = 0.3\n"
    server = await proxy(parse(text))
    reader, writer = await asyncio.open_connection(*server.address("web"))
    async with asyncio.timeout(30):
        assert await reader.read(-1) == b""  # no ClientHello in time: closed
    writer.close()
    await no_leak(server)
