"""Who may reach the admin API, which can drain the node: loopback, or TLS with client certs."""

from __future__ import annotations

import asyncio
import ssl
import tomllib
from pathlib import Path

import aiohttp
import aiohttp.web
import pytest
from click.testing import CliRunner

from agent.proxy import ProxyClient
from haproxy_py import pki
from haproxy_py.cluster.agent_config import AdminClientTls
from haproxy_py.configfile import ConfigError, Table
from haproxy_py.proxy.cli import main
from haproxy_py.proxy.config import ProxyConfig, parse_proxy

pytestmark = pytest.mark.asyncio(loop_factories=["asyncio"])

ROUTING = (
    '[[listeners]]\nname = "web"\nbind = "127.0.0.1:0"\n'
    '[[routes]]\nbackend = "app"\n[backends.app]\nservers = ["127.0.0.1:9"]\n'
)


@pytest.fixture
def certs(tmp_path: Path) -> Path:
    pki.init_ca(tmp_path / "ca")
    pki.issue(tmp_path / "ca", "admin", ["localhost"], out=tmp_path)
    pki.issue(tmp_path / "ca", "agent", client=True, out=tmp_path)
    pki.init_ca(tmp_path / "other", common_name="another CA")
    pki.issue(tmp_path / "other", "stranger", client=True, out=tmp_path)
    return tmp_path


def admin_tls(certs: Path, client_ca: str | None = None) -> str:
    ca = client_ca or str(certs / "ca" / "ca.crt")
    return f'tls = {{ cert = "{certs}/admin.crt", key = "{certs}/admin.key", client_ca = "{ca}" }}'


def parse(admin: str) -> ProxyConfig:
    return parse_proxy(Table(tomllib.loads(f"[admin]\n{admin}\n{ROUTING}"), "node.toml", ""))


@pytest.mark.parametrize("bind", ["127.0.0.1:9901", "127.0.0.5:9901", "[::1]:9901", "localhost:1"])
async def test_loopback_needs_no_tls(bind: str) -> None:
    assert parse(f'bind = "{bind}"').admin.tls is None


@pytest.mark.parametrize("bind", ["0.0.0.0:9901", "198.18.0.11:9901", "[::]:9901", "node1:9901"])
async def test_any_other_address_is_refused_without_client_certificates(
    bind: str, tmp_path: Path
) -> None:
    config = tmp_path / "node.toml"
    config.write_text(f'[admin]\nbind = "{bind}"\n{ROUTING}')
    result = CliRunner().invoke(main, ["check-config", str(config)])
    assert result.exit_code == 2
    expected = f"haproxy-py: {config}: admin.bind: {bind} is not a loopback address"
    assert result.output.startswith(expected)
    assert "client_ca" in result.output
    assert "Traceback" not in result.output


async def test_any_address_with_client_certificates(certs: Path) -> None:
    config = parse(f'bind = "0.0.0.0:9901"\n{admin_tls(certs)}')
    assert config.admin.tls is not None
    assert config.admin.tls.client_ca == certs / "ca" / "ca.crt"


@pytest.mark.parametrize(
    ("tls", "key", "problem"),
    [
        ("{{ cert = '{c}/admin.crt', key = '{c}/admin.key' }}", "client_ca", "missing"),
        (
            "{{ cert = '{c}/admin.crt', key = '{c}/admin.key', client_ca = '{c}/no.crt' }}",
            "client_ca",
            "no.crt: no such file",
        ),
        (
            "{{ cert = '{c}/admin.crt', key = '{c}/admin.key', client_ca = '{c}/admin.key' }}",
            "client_ca",
            "not a PEM CA certificate",
        ),
        (
            "{{ cert = '{c}/admin.crt', key = '{c}/agent.key', client_ca = '{c}/ca/ca.crt' }}",
            "key",
            "does not belong to the certificate",
        ),
        (
            "{{ cert = '{c}/admin.crt', key = '{c}/admin.key', client_ca = '{c}/ca.crt', x = 1 }}",
            "x",
            "",
        ),
    ],
)
async def test_tls_problems_name_the_key(certs: Path, tls: str, key: str, problem: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse(f'bind = "0.0.0.0:9901"\ntls = {tls.format(c=certs)}')
    message = str(caught.value)
    assert f"admin.tls.{key}" in message
    assert problem in message


def client(certs: Path, name: str | None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(certs / "ca" / "ca.crt"))
    if name is not None:
        context.load_cert_chain(certs / f"{name}.crt", certs / f"{name}.key")
    return context


async def test_admin_api_over_tls_admits_only_certified_clients(proxy, certs: Path) -> None:
    server = await proxy(parse(f'bind = "127.0.0.1:0"\n{admin_tls(certs)}'))
    url = f"https://localhost:{server.admin.address[1]}/healthz"
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        async with session.get(url, ssl=client(certs, "agent")) as answer:
            assert answer.status in (200, 503)  # served; the backend is down, which is fine here
        for name in (None, "stranger"):
            with pytest.raises(aiohttp.ClientError):
                async with session.get(url, ssl=client(certs, name)) as refused:
                    await refused.read()


async def test_the_agent_presents_its_client_certificate(backends, proxy, certs: Path) -> None:
    (b,) = await backends(1)
    server = await proxy(
        parse_proxy(
            Table(
                tomllib.loads(
                    f'[admin]\nbind = "127.0.0.1:0"\n{admin_tls(certs)}\n'
                    '[[listeners]]\nname = "web"\nbind = "127.0.0.1:0"\n'
                    f'[[routes]]\nbackend = "app"\n[backends.app]\nservers = ["{b.address}"]\n'
                ),
                "node.toml",
                "",
            )
        )
    )
    url = f"https://localhost:{server.admin.address[1]}"
    ca = certs / "ca" / "ca.crt"
    agent = ProxyClient(url, 30, AdminClientTls(ca, certs / "agent.crt", certs / "agent.key"))
    stranger = ProxyClient(
        url, 30, AdminClientTls(ca, certs / "stranger.crt", certs / "stranger.key")
    )
    try:
        status = await agent.probe()
        assert status.live, status.detail
        assert (status.ready, status.pools) == (1, 1)
        assert await agent.drain_address("127.0.0.9") == "/drain answered 202 (0 WebSockets)"
        refused = await stranger.probe()
        assert not refused.live
        assert refused.detail.startswith("/healthz unreachable")
        assert (await stranger.drain_address("127.0.0.9")).startswith("/drain unreachable")
    finally:
        await agent.close()
        await stranger.close()


async def test_changes_from_another_host_or_origin_are_refused(proxy) -> None:
    """DNS rebinding (a foreign Host) and CSRF (a foreign Origin) cannot drain; the agent can."""
    server = await proxy(parse('bind = "127.0.0.1:0"'))
    base = f"http://127.0.0.1:{server.admin.address[1]}"
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        for headers in ({"Host": "attacker.example"}, {"Origin": "http://127.0.0.2:18999"}):
            async with session.post(f"{base}/drain", headers=headers) as refused:
                assert refused.status == 403, headers
                assert (await refused.json())["status"] == "refused"
        assert not server.draining and server.admin.refused == 2
        async with session.get(f"{base}/status", headers={"Host": "attacker.example"}) as read:
            assert read.status == 200
        async with session.post(f"{base}/drain") as accepted:
            assert accepted.status == 202
        assert server.draining


CHROMIUM = "/usr/bin/chromium"


async def test_a_web_page_in_chromium_cannot_drain_the_node(proxy, tmp_path: Path) -> None:
    """The review's reproduction: a page on another local origin auto-submits a form to
    POST /drain. The request arrives (counted) and is refused; the node keeps serving."""
    server = await proxy(parse('bind = "127.0.0.1:0"'))
    target = f"http://127.0.0.1:{server.admin.address[1]}/drain"
    page = (
        f'<form id="f" method="POST" action="{target}"></form>'
        '<script>document.getElementById("f").submit()</script>'
    )
    site = aiohttp.web.Application()
    site.router.add_get("/", lambda _: aiohttp.web.Response(text=page, content_type="text/html"))
    runner = aiohttp.web.AppRunner(site)
    await runner.setup()
    attacker = aiohttp.web.TCPSite(runner, "127.0.0.2", 0)
    await attacker.start()
    port = runner.addresses[0][1]
    argv = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run"]
    argv += [f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=5000"]
    argv += ["--dump-dom", f"http://127.0.0.2:{port}/"]
    try:
        browser = await asyncio.create_subprocess_exec(
            *argv, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
        )
        try:
            await asyncio.wait_for(browser.wait(), 90)
        finally:
            if browser.returncode is None:
                browser.kill()
                await browser.wait()
    finally:
        await runner.cleanup()
    assert server.admin.refused >= 1, "the browser's POST never reached the admin API"
    assert not server.draining
