"""The admin listener: /healthz, /status, /metrics and the status page."""

from __future__ import annotations

from tests.integration.proxy.support import admin_url, proxy_config, url


async def test_healthz_ok(backends, proxy, session) -> None:
    (b,) = await backends(1)
    server = await proxy(proxy_config({"app": [b.address]}))
    async with session.get(admin_url(server, "/healthz")) as response:
        assert response.status == 200
        assert await response.json() == {
            "status": "ok",
            "ready": 1,
            "pools": 1,
            "servers_up": 1,
            "servers": 1,
            "draining": False,
        }


async def test_status_json(backends, proxy, session) -> None:
    (b,) = await backends(1)
    server = await proxy(proxy_config({"app": [b.address]}))
    async with session.ws_connect(url(server, "/ws")) as ws:
        await ws.send_str("x")
        await ws.receive_str()
        async with session.get(admin_url(server, "/status")) as response:
            status = await response.json()
    assert status["node"] == "node-test"
    assert status["config_generation"] == 1
    assert status["websockets"] == {"open": 1, "total": 1}
    assert status["listeners"][0]["name"] == "web"
    (entry,) = status["backends"]["app"]["servers"]
    assert entry["address"] == b.address and entry["state"] == "up" and entry["active"] == 1
    assert status["uptime_seconds"] >= 0


async def test_metrics_text(backends, proxy, session) -> None:
    (b,) = await backends(1)
    server = await proxy(proxy_config({"app": [b.address]}))
    for path in ("/a", "/status/404", "/status/503"):
        async with session.get(url(server, path)) as response:
            await response.read()
    async with session.ws_connect(url(server, "/ws")) as ws:
        await ws.send_str("hello")
        await ws.receive_str()
    async with session.get(admin_url(server, "/metrics")) as response:
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = await response.text()
    lines = set(text.splitlines())
    assert 'haproxy_py_http_responses_total{code="2xx"} 1' in lines
    assert 'haproxy_py_http_responses_total{code="4xx"} 1' in lines
    assert 'haproxy_py_http_responses_total{code="5xx"} 1' in lines
    assert "haproxy_py_websocket_sessions_total 1" in lines
    assert f'haproxy_py_backend_server_up{{backend="app",server="{b.address}"}} 1' in lines
    assert any(
        line.startswith('haproxy_py_bytes_total{direction="in",kind="websocket"}') for line in lines
    )


async def test_status_page_html(backends, proxy, session) -> None:
    (b,) = await backends(1)
    server = await proxy(proxy_config({"app": [b.address]}))
    async with session.get(admin_url(server, "/")) as response:
        assert response.content_type == "text/html"
        page = await response.text()
    assert "node-test" in page and b.address in page
    assert "<script" not in page and "http://" not in page and "https://" not in page
