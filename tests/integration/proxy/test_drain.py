"""The drain() entry point: refuse new work, finish HTTP in flight, close tunnels."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from tests.integration.proxy.support import admin_url, proxy_config, url
from tests.support.wait import eventually_async


@pytest.mark.single_process
async def test_drain_finishes_http_then_closes_tunnels(backends, proxy, session) -> None:
    (b,) = await backends(1)
    server = await proxy(proxy_config({"app": [b.address]}))
    ws = await session.ws_connect(url(server, "/ws"))
    async with session.get(url(server, "/gated")) as response:
        assert await response.content.readexactly(6) == b"first;"
        drain = asyncio.create_task(server.drain(grace=30))
        await eventually_async(lambda: server.draining, 30, "draining")
        async with session.get(admin_url(server, "/healthz")) as health:
            assert health.status == 503
            assert (await health.json())["reasons"] == ["draining"]
        with pytest.raises(aiohttp.ClientConnectionError):
            async with session.get(url(server, "/new")) as refused:
                await refused.read()
        assert not drain.done()
        b.gate.set()
        assert await response.content.read() == b"second"
    assert await drain is True
    msg = await ws.receive(timeout=30)
    assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
    assert not server.tunnels.open
