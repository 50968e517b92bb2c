"""Active and passive health checks taking servers out and bringing them back."""

from __future__ import annotations

import socket
from collections import Counter

from tests.integration.proxy.support import admin_url, config_from_text, raw_exchange, url
from tests.support.wait import eventually_async

HEALTH = 'health = { path = "/health", interval = 0.1, timeout = 1.0, rise = 2, fall = 2 }'


def closed_port() -> int:
    """A loopback port nothing listens on (connects are refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def served_by(session, server, n: int) -> Counter[str]:
    count: Counter[str] = Counter()
    for _ in range(n):
        async with session.get(url(server, "/who")) as response:
            assert response.status == 200
            count[(await response.json())["server"]] += 1
    return count


async def test_active_check_takes_server_out_and_back(backends, proxy, session) -> None:
    b0, b1 = await backends(2)
    server = await proxy(config_from_text(f'servers = ["{b0.address}", "{b1.address}"]\n{HEALTH}'))
    s0, s1 = server.runtime.backends["app"].servers
    await eventually_async(
        lambda: b0.health_checks >= 2 and b1.health_checks >= 2, 30, "checks ran"
    )
    b0.healthy = False
    await eventually_async(lambda: not s0.up, 30, "b0 marked down")
    assert s1.up
    assert await served_by(session, server, 10) == {"b1": 10}
    async with session.get(admin_url(server, "/status")) as response:
        state = {s["address"]: s for s in (await response.json())["backends"]["app"]["servers"]}
    assert state[b0.address]["state"] == "down"
    assert "500" in state[b0.address]["last_error"]
    b0.healthy = True
    await eventually_async(lambda: s0.up, 30, "b0 back up after rise checks")
    assert await served_by(session, server, 10) == {"b0": 5, "b1": 5}


async def test_all_down_is_503_live_but_not_ready(backends, proxy, session) -> None:
    """A pool with no server up is a readiness score, not a liveness failure."""
    (b0,) = await backends(1)
    server = await proxy(config_from_text(f'servers = ["{b0.address}"]\n{HEALTH}'))
    b0.healthy = False
    await eventually_async(lambda: not server.runtime.backends["app"].servers[0].up, 30, "down")
    raw = await raw_exchange(server, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert raw.startswith(b"HTTP/1.1 503 ")
    body = raw.split(b"\r\n\r\n", 1)[1]
    assert body == b"no server is available; retry later\n"
    async with session.get(admin_url(server, "/healthz")) as response:
        assert response.status == 200
        body = await response.json()
        assert (body["ready"], body["pools"]) == (0, 1)
    async with session.get(admin_url(server, "/readyz")) as response:
        assert response.status == 503
        assert (await response.json())["reasons"] == ["backend app: no server up"]


async def test_connect_failure_tries_next_server_and_marks_down(backends, proxy, session) -> None:
    """A refused connect goes on to the next server; `fall` such failures mark it down."""
    (b1,) = await backends(1)
    dead = f"127.0.0.1:{closed_port()}"
    server = await proxy(
        config_from_text(
            f'servers = ["{dead}", "{b1.address}"]\nbalance = "round_robin"\n'
            "health = { fall = 2, retry_down_after = 60 }"
        )
    )
    assert await served_by(session, server, 6) == {b1.name: 6}
    dead_server = server.runtime.backends["app"].servers[0]
    assert not dead_server.up
    assert dead_server.load() == 0


async def test_5xx_answers_never_take_a_server_out_by_default(backends, proxy, session) -> None:
    """Passive health counts transport failures only: a URL that answers 500 is the app's."""
    (b0,) = await backends(1)
    server = await proxy(config_from_text(f'servers = ["{b0.address}"]\nhealth = {{ fall = 3 }}'))
    s0 = server.runtime.backends["app"].servers[0]
    for _ in range(6):
        async with session.get(url(server, "/status/500")) as response:
            assert response.status == 500
    assert s0.up
    async with session.get(url(server, "/ok")) as response:
        assert response.status == 200


async def test_passive_5xx_marks_down_then_retried(backends, proxy, session) -> None:
    """With `passive_5xx`, fall 5xx answers take a server out until retry_down_after."""
    (b0,) = await backends(1)
    server = await proxy(
        config_from_text(
            f'servers = ["{b0.address}"]\n'
            "health = { fall = 3, retry_down_after = 0.3, passive_5xx = true }"
        )
    )
    s0 = server.runtime.backends["app"].servers[0]
    for _ in range(3):
        async with session.get(url(server, "/status/500")) as response:
            assert response.status == 500
    assert not s0.up
    await eventually_async(lambda: s0.up, 30, "retried after retry_down_after")

    async def served() -> bool:  # with workers, each learns of it from the master a moment later
        async with session.get(url(server, "/ok")) as response:
            return response.status == 200

    await eventually_async(served, 10, "a request served again")
