"""`haproxy-py run` with `workers = 2`: what must hold across worker processes.

Each test runs the real command (a master and two workers) and reaches it
only by its listener, its admin API, its log and signals. Sixteen WebSockets
land on both workers (the kernel hashes each connection to one socket of
the SO_REUSEPORT group; all sixteen on one worker has odds of 1 in 32,768),
which `spread` checks before the test relies on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.integration.proxy.support import Backend, NodeProcess, node_process
from tests.support.wait import eventually_async

pytestmark = pytest.mark.asyncio(loop_factories=["asyncio"])

CONFIG = """\
[node]
name = "wk-node"

[admin]
bind = "127.0.0.1:0"

[proxy]
workers = 2
timeouts = {{ drain = 10 }}

[[listeners]]
name = "web"
bind = "127.0.0.1:0"

[[routes]]
path_prefix = "/"
backend = "app"
{extra}
[backends.app]
servers = {servers}
{backend}
"""

WEBSOCKETS = 16


def write(path: Path, servers: str, backend: str = "", extra: str = "") -> Path:
    path.write_text(CONFIG.format(servers=servers, backend=backend, extra=extra))
    return path


@pytest.fixture(name="apps")
async def _apps() -> AsyncIterator[list[Backend]]:
    apps = [Backend("a0"), Backend("a1")]
    for app in apps:
        await app.start()
    yield apps
    for app in apps:
        await app.stop()


@pytest.fixture(name="client")
async def _client() -> AsyncIterator[aiohttp.ClientSession]:
    connector = aiohttp.TCPConnector(force_close=True)  # every request on a new connection
    async with aiohttp.ClientSession(
        connector=connector, timeout=aiohttp.ClientTimeout(total=30)
    ) as session:
        yield session


def web(node: NodeProcess, path: str) -> str:
    return "http://{}:{}{}".format(*node.web, path)


def admin(node: NodeProcess, path: str) -> str:
    return "http://{}:{}{}".format(*node.admin, path)


async def metrics(client: aiohttp.ClientSession, node: NodeProcess) -> dict[str, float]:
    async with client.get(admin(node, "/metrics")) as response:
        text = await response.text()
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            values[name] = float(value)
    return values


async def status(client: aiohttp.ClientSession, node: NodeProcess) -> Any:
    async with client.get(admin(node, "/status")) as response:
        return await response.json()


async def open_websockets(
    client: aiohttp.ClientSession, node: NodeProcess, n: int = WEBSOCKETS
) -> list[aiohttp.ClientWebSocketResponse]:
    return [await client.ws_connect(web(node, "/ws")) for _ in range(n)]


async def echo(ws: aiohttp.ClientWebSocketResponse, text: str = "ping") -> bool:
    await ws.send_str(text)
    msg = await ws.receive(timeout=10)
    return msg.type == aiohttp.WSMsgType.TEXT and msg.data == text


async def spread(client: aiohttp.ClientSession, node: NodeProcess) -> dict[str, float]:
    """Open client connections by worker, as the master reports them; both must have some."""
    values = await metrics(client, node)
    per_worker = {k: v for k, v in values.items() if k.startswith("haproxy_py_worker_connections")}
    assert len(per_worker) == 2 and all(per_worker.values()), per_worker
    return per_worker


@contextlib.asynccontextmanager
async def serving_websockets(
    client: aiohttp.ClientSession, path: Path, app: Backend
) -> AsyncIterator[tuple[NodeProcess, list[aiohttp.ClientWebSocketResponse]]]:
    """A node in front of `app` with WebSockets open on both of its workers."""
    async with node_process(write(path, f'["{app.address}"]')) as node:
        sockets = await open_websockets(client, node)
        await spread(client, node)
        yield node, sockets


async def closed_with(ws: aiohttp.ClientWebSocketResponse) -> int:
    """The close code the proxy sent."""
    msg = await ws.receive(timeout=30)
    assert msg.type == aiohttp.WSMsgType.CLOSE, msg
    return int(msg.data)


async def test_status_and_metrics_sum_every_worker_once(apps, client, tmp_path) -> None:
    async with node_process(write(tmp_path / "n.toml", f'["{apps[0].address}"]')) as node:
        sockets = await open_websockets(client, node)
        for _ in range(20):
            async with client.get(web(node, "/x")) as response:
                assert response.status == 200
        assert sum((await spread(client, node)).values()) == WEBSOCKETS
        snap = await status(client, node)
        assert snap["workers"] == 2
        assert snap["websockets"] == {"open": WEBSOCKETS, "total": WEBSOCKETS}
        assert snap["responses"]["2xx"] == 20
        assert snap["listeners"][0]["connections"] == WEBSOCKETS
        server = snap["backends"]["app"]["servers"][0]
        assert (server["active"], server["total"]) == (WEBSOCKETS, WEBSOCKETS + 20)
        values = await metrics(client, node)
        assert values['haproxy_py_http_responses_total{code="2xx"}'] == 20
        assert values["haproxy_py_websocket_sessions_total"] == WEBSOCKETS
        assert values["haproxy_py_connections_total"] == WEBSOCKETS + 20
        assert values["haproxy_py_worker_processes"] == 2
        for ws in sockets:
            await ws.close()


async def test_max_conns_and_least_conn_count_every_workers_connections(
    apps, client, tmp_path
) -> None:
    servers = ", ".join(f'{{ address = "{a.address}", max_conns = 5 }}' for a in apps)
    async with node_process(write(tmp_path / "n.toml", f"[{servers}]")) as node:
        sockets, refused = [], 0
        for _ in range(WEBSOCKETS):
            try:
                sockets.append(await client.ws_connect(web(node, "/ws")))
            except aiohttp.WSServerHandshakeError as exc:
                assert exc.status == 503
                refused += 1
        assert (len(sockets), refused) == (10, WEBSOCKETS - 10)
        await spread(client, node)
        names = []
        for ws in sockets:
            await ws.send_str("whoami")
            names.append((await ws.receive(timeout=10)).data)
        assert sorted(names) == ["a0"] * 5 + ["a1"] * 5
        servers_status = (await status(client, node))["backends"]["app"]["servers"]
        assert [s["active"] for s in servers_status] == [5, 5]
        for ws in sockets:
            await ws.close()


async def test_health_verdict_pushed_to_every_worker(apps, client, tmp_path) -> None:
    health = 'health = { path = "/health", interval = 0.1, timeout = 5.0, rise = 1, fall = 1 }'
    async with node_process(
        write(tmp_path / "n.toml", f'["{apps[0].address}"]', backend=health)
    ) as node:
        sockets = await open_websockets(client, node)
        await spread(client, node)
        for healthy, expected in ((False, 503), (True, 200)):
            mark = len(node.events)
            apps[0].healthy = healthy
            await node.event("server up" if healthy else "server down", after=mark, master=True)
            await asyncio.sleep(0.2)  # the verdict reaches the workers asynchronously
            answers = []
            for _ in range(20):
                async with client.get(web(node, "/x")) as response:
                    answers.append(response.status)
            assert answers == [expected] * 20
        for ws in sockets:
            await ws.close()


async def test_sighup_reload_applied_by_every_worker_without_a_drop(apps, client, tmp_path) -> None:
    path = write(tmp_path / "n.toml", f'["{apps[0].address}"]')
    async with node_process(path) as node:
        sockets = await open_websockets(client, node)
        await spread(client, node)
        stop = asyncio.Event()

        async def load() -> list[int]:
            seen = []
            while not stop.is_set():
                async with client.get(web(node, "/load")) as response:
                    seen.append(response.status)
            return seen

        running = asyncio.create_task(load())
        mark = len(node.events)
        write(tmp_path / "n.toml", "[oops", "")  # not TOML: refused once, by the master
        node.signal(signal.SIGHUP)
        await node.event("reload rejected, the running config stays", after=mark)
        extra = (
            '\n[[routes]]\npath_prefix = "/two/"\nbackend = "two"\n\n'
            f'[backends.two]\nservers = ["{apps[1].address}"]\n'
        )
        write(path, f'["{apps[0].address}"]', extra=extra)
        mark = len(node.events)
        node.signal(signal.SIGHUP)
        await node.event("config reloaded", after=mark, worker=0)
        await node.event("config reloaded", after=mark, worker=1)
        await node.event("config reloaded", after=mark, master=True)
        stop.set()
        statuses = await running
        assert statuses and set(statuses) == {200}
        assert all([await echo(ws) for ws in sockets])
        for _ in range(10):
            async with client.get(web(node, "/two/x")) as response:
                assert (await response.json())["server"] == "a1"
        rejected = [e for e in node.events if e.get("event", "").startswith("reload rejected")]
        assert len(rejected) == 1 and "worker" not in rejected[0]
        for ws in sockets:
            await ws.close()


async def test_drain_address_reaches_every_workers_websockets(apps, client, tmp_path) -> None:
    async with serving_websockets(client, tmp_path / "n.toml", apps[0]) as (node, sockets):
        async with client.post(admin(node, "/drain?address=127.0.0.1")) as response:
            assert response.status == 202
            assert (await response.json())["websockets"] == WEBSOCKETS
        assert [await closed_with(ws) for ws in sockets] == [1001] * WEBSOCKETS
        async with client.get(web(node, "/after")) as response:  # the node keeps serving
            assert response.status == 200


async def test_drain_and_undrain_reach_every_worker(apps, client, tmp_path) -> None:
    async with serving_websockets(client, tmp_path / "n.toml", apps[0]) as (node, sockets):
        async with client.post(admin(node, "/drain")) as response:
            assert response.status == 202
        assert [await closed_with(ws) for ws in sockets] == [1001] * WEBSOCKETS
        with pytest.raises(aiohttp.ClientConnectionError):
            async with client.get(web(node, "/refused")) as response:
                await response.read()
        async with client.post(admin(node, "/undrain")) as response:
            assert response.status == 200
        sockets = await open_websockets(client, node)
        await spread(client, node)  # both workers accept again
        for ws in sockets:
            await ws.close()


async def test_crashed_worker_restarted_without_touching_the_other(apps, client, tmp_path) -> None:
    async with node_process(write(tmp_path / "n.toml", f'["{apps[0].address}"]')) as node:
        sockets = await open_websockets(client, node)
        per_worker = await spread(client, node)
        on_second = int(per_worker['haproxy_py_worker_connections{worker="1"}'])
        first, second = node.workers()
        os.kill(first, signal.SIGKILL)
        # Connections arriving while it is down wait in its socket's queue (the master holds
        # the socket), then its replacement serves them: none is refused.
        answers = []
        for _ in range(10):
            async with client.get(web(node, "/during")) as response:
                answers.append(response.status)
        assert answers == [200] * 10
        await eventually_async(
            lambda: len(node.workers()) == 2 and first not in node.workers(), 30, "restart"
        )
        assert second in node.workers()
        alive = [await _still_echoes(ws) for ws in sockets]
        assert sum(alive) == on_second
        values = await metrics(client, node)
        assert values["haproxy_py_worker_restarts_total"] == 1
        assert values["haproxy_py_connections_total"] >= WEBSOCKETS  # counters kept
        more = await open_websockets(client, node)
        await spread(client, node)
        for ws in sockets + more:
            await ws.close()


async def _still_echoes(ws: aiohttp.ClientWebSocketResponse) -> bool:
    try:
        return await echo(ws)
    except (ConnectionError, aiohttp.ClientError, TypeError):
        return False


async def test_sigterm_drains_every_worker(apps, client, tmp_path) -> None:
    async with serving_websockets(client, tmp_path / "n.toml", apps[0]) as (node, sockets):
        node.signal(signal.SIGTERM)
        assert [await closed_with(ws) for ws in sockets] == [1001] * WEBSOCKETS
        assert await node.wait() == 0
        assert any(re.match("drained", str(e.get("event"))) for e in node.events)


async def test_hung_worker_is_killed_and_replaced(apps, client, tmp_path) -> None:
    """A worker whose loop stops answering (SIGSTOP) is killed and restarted by the master."""
    async with serving_websockets(client, tmp_path / "n.toml", apps[0]) as (node, sockets):
        first, second = node.workers()  # in the order of their slots
        mark = len(node.events)
        os.kill(first, signal.SIGSTOP)
        await node.event("worker not answering; killing it", after=mark, worker=0)
        await eventually_async(lambda: first not in node.workers(), 30, "the hung worker gone")
        await eventually_async(lambda: len(node.workers()) == 2, 30, "a replacement")
        assert second in node.workers()
        async with client.get(web(node, "/after")) as response:
            assert response.status == 200
        for ws in sockets:
            await ws.close()


async def test_workers_run_the_masters_package_whatever_the_working_directory(
    apps, client, tmp_path
) -> None:
    """`python -m` puts the working directory first on the path: a `haproxy_py` there (another
    checkout, a backup) must not become the workers' code."""
    decoy = tmp_path / "cwd" / "haproxy_py"
    decoy.mkdir(parents=True)
    (decoy / "__init__.py").write_text("raise SystemExit('the decoy package was imported')\n")
    config = write(tmp_path / "node.toml", f'["{apps[0].address}"]')
    async with node_process(config, cwd=decoy.parent) as node:
        async with client.get(web(node, "/")) as response:
            assert response.status == 200
        assert len(node.workers()) == 2
