"""SIGHUP reload: new config for new connections, nothing established dropped, bad files refused."""

from __future__ import annotations

import asyncio
import json
import signal
import tomllib
from pathlib import Path

import aiohttp
import pytest

from haproxy_py.configfile import Table
from haproxy_py.proxy.config import parse_proxy
from tests.integration.proxy.process import CONFIG, read_event, running
from tests.integration.proxy.support import Backend, proxy_config


async def ask(session: aiohttp.ClientSession, listener: str, path: str) -> str:
    async with session.get(f"http://{listener}{path}") as response:
        assert response.status == 200
        return str((await response.json())["server"])


@pytest.mark.asyncio(loop_factories=["asyncio"])
async def test_sighup_reloads_without_dropping_and_refuses_a_bad_file(tmp_path: Path) -> None:
    old, new = Backend("old"), Backend("new")
    await old.start()
    await new.start()
    config = tmp_path / "node.toml"
    try:
        async with running(config, old.address) as (process, started):
            listener = str(started["listeners"]["web"])
            async with aiohttp.ClientSession() as session:
                ws = await session.ws_connect(f"http://{listener}/ws")
                assert await ask(session, listener, "/a") == "old"  # leaves a keep-alive connection

                config.write_text(CONFIG.format(bind="127.0.0.1:0", server=new.address))
                process.send_signal(signal.SIGHUP)
                reloaded = await read_event(process, "config reloaded")
                assert reloaded["generation"] == 2
                assert await ask(session, listener, "/b") == "new"
                await ws.send_str("whoami")  # the WebSocket opened before still talks to its server
                assert (await ws.receive(timeout=30)).data == "old"

                config.write_text(CONFIG.format(bind="127.0.0.1:0", server="nowhere"))
                process.send_signal(signal.SIGHUP)
                rejected = await read_event(process, "reload rejected, the running config stays")
                assert str(rejected["error"]).startswith(f"{config}: backends.app.servers[0]: ")
                assert await ask(session, listener, "/c") == "new"
                await ws.send_str("still here")
                assert (await ws.receive(timeout=30)).data == "still here"
                await ws.close()
            process.send_signal(signal.SIGTERM)
            async with asyncio.timeout(30):
                assert await process.wait() == 0
    finally:
        await old.stop()
        await new.stop()


async def test_reload_adds_and_removes_listeners(backends, proxy) -> None:
    (b,) = await backends(1)
    server = await proxy(proxy_config({"app": [b.address]}))
    host, port = server.address("web")
    reader, writer = await asyncio.open_connection(host, port)
    text = (
        '[admin]\nbind = "127.0.0.1:0"\n[[listeners]]\nname = "other"\nbind = "127.0.0.1:0"\n'
        f'[[routes]]\nbackend = "app"\n[backends.app]\nservers = ["{b.address}"]\n'
    )
    await server.reload(parse_proxy(Table(tomllib.loads(text), "test.toml", "")))
    other = server.address("other")
    with pytest.raises(KeyError):
        server.address("web")
    # The removed listener accepts no one new, but its open connection is served to the end.
    with pytest.raises(OSError):
        await asyncio.open_connection(host, port)
    writer.write(b"GET /kept HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    async with asyncio.timeout(30):
        answer = await reader.read(-1)
    writer.close()
    assert json.loads(answer.partition(b"\r\n\r\n")[2])["path"] == "/kept"
    reader, writer = await asyncio.open_connection(*other)
    writer.write(b"GET /new HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    async with asyncio.timeout(30):
        assert (await reader.read(-1)).startswith(b"HTTP/1.1 200")
    writer.close()
