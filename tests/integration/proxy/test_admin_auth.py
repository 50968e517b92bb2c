"""Who may change a node through its admin API beyond the same-site check: bearer tokens,
client-certificate names, revoked certificates, and what a SIGHUP-style reload changes."""

from __future__ import annotations

import ssl
import tomllib
from pathlib import Path

import aiohttp
import pytest

from agent.proxy import ProxyClient
from haproxy_py import pki
from haproxy_py.configfile import ConfigError, Table
from haproxy_py.proxy.config import ProxyConfig, parse_proxy

pytestmark = pytest.mark.asyncio(loop_factories=["asyncio"])

ROUTING = (
    '[[listeners]]\nname = "web"\nbind = "127.0.0.1:0"\n'
    '[[routes]]\nbackend = "app"\n[backends.app]\nservers = ["127.0.0.1:9"]\n'
)
TOKEN = "0123456789abcdef0123456789abcdef"


@pytest.fixture
def certs(tmp_path: Path) -> Path:
    pki.init_ca(tmp_path / "ca")
    pki.issue(tmp_path / "ca", "admin", ["localhost"], out=tmp_path)
    for name in ("agent-node1", "operator-alice", "operator-mallory"):
        pki.issue(tmp_path / "ca", name, client=True, out=tmp_path)
    return tmp_path


def token_file(path: Path, token: str = TOKEN, mode: int = 0o600) -> Path:
    path.write_text(token + "\n")
    path.chmod(mode)
    return path


def parse(admin: str) -> ProxyConfig:
    return parse_proxy(Table(tomllib.loads(f"[admin]\n{admin}\n{ROUTING}"), "node.toml", ""))


def with_tls(certs: Path, extra: str = "") -> str:
    return (
        'bind = "127.0.0.1:0"\n[admin.tls]\n'
        f'cert = "{certs}/admin.crt"\nkey = "{certs}/admin.key"\n'
        f'client_ca = "{certs}/ca/ca.crt"\n{extra}'
    )


def client(certs: Path, name: str) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(certs / "ca" / "ca.crt"))
    context.load_cert_chain(certs / f"{name}.crt", certs / f"{name}.key")
    return context


async def test_changes_need_the_token_reads_do_not(proxy, tmp_path: Path) -> None:
    agent_token = token_file(tmp_path / "agent.token")
    server = await proxy(parse(f'bind = "127.0.0.1:0"\ntokens = {{ agent = "{agent_token}" }}'))
    base = f"http://127.0.0.1:{server.admin.address[1]}"
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        for headers in ({}, {"Authorization": "Bearer wrong-token-wrong-token"}):
            async with session.post(f"{base}/drain", headers=headers) as refused:
                assert refused.status == 403
                assert "bearer token" in (await refused.json())["reason"]
        async with session.get(f"{base}/status") as read:
            assert read.status == 200
        assert not server.draining
    agent = ProxyClient(base, 30, token=TOKEN)
    try:
        assert await agent.drain_address("127.0.0.9") == "/drain answered 202 (0 WebSockets)"
    finally:
        await agent.close()


async def test_only_the_named_certificates_may_change_the_node(proxy, certs: Path) -> None:
    config = parse(with_tls(certs, 'client_names = ["agent-node1", "operator-alice"]\n'))
    server = await proxy(config)
    url = f"https://localhost:{server.admin.address[1]}"
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        async with session.post(
            f"{url}/drain", params={"address": "127.0.0.9"}, ssl=client(certs, "operator-mallory")
        ) as refused:
            assert refused.status == 403
            assert "client_names" in (await refused.json())["reason"]
        async with session.get(f"{url}/status", ssl=client(certs, "operator-mallory")) as read:
            assert read.status == 200  # a certificate from the CA still reads
        async with session.post(
            f"{url}/drain", params={"address": "127.0.0.9"}, ssl=client(certs, "agent-node1")
        ) as accepted:
            assert accepted.status == 202


async def test_a_revoked_certificate_is_refused_from_its_next_request(proxy, certs: Path) -> None:
    """`hactl certs revoke` writes the CRL; the admin API reads it again when it changes."""
    pki.revoke(certs / "ca", certs / "operator-mallory.crt")  # the CRL exists, with one entry
    crl = pki.crl_path(certs / "ca")
    server = await proxy(parse(with_tls(certs, f'crl = "{crl}"\n')))
    url = f"https://localhost:{server.admin.address[1]}/status"
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        async with session.get(url, ssl=client(certs, "operator-mallory")) as refused:
            assert refused.status == 403
            assert "revoked" in (await refused.json())["reason"]
        async with session.get(url, ssl=client(certs, "operator-alice")) as served:
            assert served.status == 200
        pki.revoke(certs / "ca", certs / "operator-alice.crt")
        async with session.get(url, ssl=client(certs, "operator-alice")) as refused:
            assert refused.status == 403, "the changed CRL was not read again"


async def test_reload_applies_new_tokens_and_keeps_the_running_bind(proxy, tmp_path: Path) -> None:
    first = token_file(tmp_path / "first.token")
    second = token_file(tmp_path / "second.token", "fedcba9876543210fedcba9876543210")
    server = await proxy(parse(f'bind = "127.0.0.1:0"\ntokens = {{ ops = "{first}" }}'))
    port = server.admin.address[1]
    await server.reload(parse(f'bind = "127.0.0.1:1"\ntokens = {{ ops = "{second}" }}'))
    assert server.runtime.config.admin.port == 0, "the bind applies from the next start"
    base = f"http://127.0.0.1:{port}"
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        old = {"Authorization": f"Bearer {TOKEN}"}
        async with session.post(f"{base}/drain", params={"address": "127.0.0.9"}, headers=old) as r:
            assert r.status == 403, "the replaced token still works"
        new = {"Authorization": "Bearer fedcba9876543210fedcba9876543210"}
        async with session.post(f"{base}/drain", params={"address": "127.0.0.9"}, headers=new) as r:
            assert r.status == 202


@pytest.mark.parametrize(
    ("mode", "content", "problem"),
    [
        (0o644, TOKEN, "readable by other users; chmod o-rwx"),
        (0o600, "short", "at least 16 characters"),
    ],
)
async def test_a_bad_token_file_is_a_config_error(
    tmp_path: Path, mode: int, content: str, problem: str
) -> None:
    path = token_file(tmp_path / "t.token", content, mode)
    with pytest.raises(ConfigError) as caught:
        parse(f'bind = "127.0.0.1:0"\ntokens = {{ agent = "{path}" }}')
    assert "admin.tokens.agent" in str(caught.value) and problem in str(caught.value)


async def test_a_crl_from_another_ca_is_a_config_error(certs: Path) -> None:
    pki.init_ca(certs / "other", common_name="another CA")
    crl = pki.crl_path(certs / "other")
    with pytest.raises(ConfigError) as caught:
        parse(with_tls(certs, f'crl = "{crl}"\n'))
    assert "admin.tls.crl" in str(caught.value) and "not signed by the CA" in str(caught.value)
