"""Real aiohttp backends on 127.0.0.1:0, a proxy config builder and small client helpers."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import signal
import sys
import tomllib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from haproxy_py.configfile import Table
from haproxy_py.proxy.config import ProxyConfig, parse_proxy
from haproxy_py.proxy.server import ProxyServer


class Backend:
    """An app server that can echo, stream, stall, fail its health check and speak WebSocket."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.healthy = True
        self.health_checks = 0
        self.requests = 0
        self.ws_close_codes: list[int | None] = []
        self.gate = asyncio.Event()  # /gated waits for it between its two chunks
        self.first_chunk = asyncio.Event()  # set by /gated-upload on its first body bytes
        self.runner: web.AppRunner | None = None
        self.port = 0
        app = web.Application()
        app.router.add_get("/health", self.health)
        app.router.add_get("/ws", self.websocket)
        app.router.add_get("/stream", self.stream)
        app.router.add_get("/slow", self.slow)
        app.router.add_get("/status/{code}", self.status)
        app.router.add_get("/hop", self.hop)
        app.router.add_get("/gated", self.gated)
        app.router.add_post("/gated-upload", self.gated_upload)
        app.router.add_route("*", "/{tail:.*}", self.echo)
        self.app = app

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self, port: int = 0) -> None:
        self.runner = web.AppRunner(self.app, access_log=None, shutdown_timeout=0.5)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", port, reuse_address=True)
        await site.start()
        self.port = self.runner.addresses[0][1]

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None

    async def echo(self, request: web.Request) -> web.Response:
        """Answers with what it received: method, path, headers and a digest of the body."""
        self.requests += 1
        digest = hashlib.sha256()
        size = 0
        async for chunk in request.content.iter_any():
            digest.update(chunk)
            size += len(chunk)
        return web.json_response(
            {
                "server": self.name,
                "method": request.method,
                "path": request.path_qs,
                "headers": {k.lower(): v for k, v in request.headers.items()},
                "body_size": size,
                "body_sha256": digest.hexdigest(),
            }
        )

    async def health(self, request: web.Request) -> web.Response:
        self.health_checks += 1
        return web.Response(text="ok") if self.healthy else web.Response(status=500, text="sick")

    async def stream(self, request: web.Request) -> web.StreamResponse:
        """`n` chunks of `size` bytes, each flushed, without Content-Length (chunked)."""
        n, size = int(request.query.get("n", "10")), int(request.query.get("size", "1000"))
        response = web.StreamResponse()
        await response.prepare(request)
        for i in range(n):
            await response.write(bytes([65 + i % 26]) * size)
        await response.write_eof()
        return response

    async def gated(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        await response.write(b"first;")
        await self.gate.wait()
        await response.write(b"second")
        await response.write_eof()
        return response

    async def gated_upload(self, request: web.Request) -> web.Response:
        size = len(await request.content.readany())
        self.first_chunk.set()
        async for chunk in request.content.iter_any():
            size += len(chunk)
        return web.Response(text=str(size))

    async def slow(self, request: web.Request) -> web.Response:
        await asyncio.sleep(float(request.query.get("delay", "5")))
        return web.Response(text="late")

    async def status(self, request: web.Request) -> web.Response:
        return web.Response(status=int(request.match_info["code"]), text="as asked")

    async def hop(self, request: web.Request) -> web.Response:
        return web.Response(
            text="hop",
            headers={
                "Connection": "X-Internal",
                "X-Internal": "secret",
                "Keep-Alive": "timeout=9",
                "X-Public": "yes",
            },
        )

    async def websocket(self, request: web.Request) -> web.WebSocketResponse:
        """Echoes; `close:<code>` closes with that code, `flood:<n>` sends n x 64 KiB."""
        ws = web.WebSocketResponse(protocols=("chat", "superchat"), max_msg_size=8 << 20)
        await ws.prepare(request)
        async for msg in ws:
            if msg.type == aiohttp.WSMsgType.TEXT:
                if msg.data.startswith("close:"):
                    await ws.close(code=int(msg.data[6:]), message=b"asked")
                    break
                if msg.data.startswith("flood:"):
                    for _ in range(int(msg.data[6:])):
                        await ws.send_bytes(b"f" * 65536)
                elif msg.data == "whoami":
                    await ws.send_str(self.name)
                else:
                    await ws.send_str(msg.data)
            elif msg.type == aiohttp.WSMsgType.BINARY:
                await ws.send_bytes(msg.data)
        self.ws_close_codes.append(ws.close_code)
        return ws


def proxy_config(
    backends: dict[str, list[str]],
    extra: str = "",
    route_host: str | None = None,
    **backend_keys: str,
) -> ProxyConfig:
    """One listener and admin on port 0, one route per backend (the first at /)."""
    text = '[admin]\nbind = "127.0.0.1:0"\n\n[[listeners]]\nname = "web"\nbind = "127.0.0.1:0"\n\n'
    for i, name in enumerate(backends):
        prefix = "/" if i == 0 else f"/{name}/"
        host = "" if route_host is None else f'host = "{route_host}"\n'
        text += f'[[routes]]\n{host}path_prefix = "{prefix}"\nbackend = "{name}"\n\n'
    for name, servers in backends.items():
        text += f"[backends.{name}]\nservers = {json.dumps(servers)}\n"
        for key, value in backend_keys.items():
            text += f"{key} = {value}\n"
    text += extra
    return parse_proxy(Table(tomllib.loads(text), "test.toml", ""))


def config_from_text(backend_table: str, extra: str = "") -> ProxyConfig:
    """One listener and admin on port 0 routing everything to `[backends.app]` as given."""
    text = (
        '[admin]\nbind = "127.0.0.1:0"\n\n[[listeners]]\nname = "web"\nbind = "127.0.0.1:0"\n\n'
        '[[routes]]\nbackend = "app"\n\n[backends.app]\n'
    )
    return parse_proxy(Table(tomllib.loads(text + backend_table + "\n" + extra), "test.toml", ""))


def url(server: ProxyServer, path: str = "/") -> str:
    host, port = server.address("web")
    return f"http://{host}:{port}{path}"


def admin_url(server: ProxyServer, path: str) -> str:
    host, port = server.admin.address
    return f"http://{host}:{port}{path}"


async def raw_exchange(
    server: ProxyServer, request: bytes, *, read_until_close: bool = True
) -> bytes:
    """Send raw bytes to the listener and read until the proxy closes (30 s at most)."""
    host, port = server.address("web")
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(request)
        async with asyncio.timeout(30):
            return await reader.read(-1) if read_until_close else await reader.read(65536)
    finally:
        writer.close()


@contextlib.contextmanager
def access_lines(server: ProxyServer) -> Iterator[list[dict[str, Any]]]:
    """The access log lines `server` writes inside the block, parsed (its sink swapped)."""
    written: list[bytes] = []
    entries: list[dict[str, Any]] = []
    log = server.access_log
    log.sync()
    original, log.sink = log.sink, written.append
    try:
        yield entries
    finally:
        log.sync()
        log.sink = original
        entries.extend(json.loads(line) for line in b"".join(written).splitlines())


class NodeProcess:
    """`haproxy-py run` as a real process (a master and its workers), read by its JSON log."""

    def __init__(self, config: Path, cwd: Path | None = None) -> None:
        self.config = config
        self.cwd = cwd
        self.process: asyncio.subprocess.Process | None = None
        self.events: list[dict[str, Any]] = []
        self._new = asyncio.Event()
        self._reader: asyncio.Task[None] | None = None
        self.web: tuple[str, int] = ("", 0)
        self.admin: tuple[str, int] = ("", 0)

    async def start(self) -> NodeProcess:
        self.process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-P",  # the installed package, wherever `cwd` is
            "-m",
            "haproxy_py.proxy",
            "run",
            "--config",
            str(self.config),
            cwd=self.cwd,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        self._reader = asyncio.get_running_loop().create_task(self._read())
        started = await self.event("proxy started", master=True)
        host, port = str(started["listeners"]["web"]).rsplit(":", 1)
        self.web = (host, int(port))
        host, port = str(started["admin"]).rsplit(":", 1)
        self.admin = (host, int(port))
        return self

    async def _read(self) -> None:
        assert self.process is not None and self.process.stderr is not None
        while line := await self.process.stderr.readline():
            with contextlib.suppress(ValueError):
                self.events.append(json.loads(line))
                self._new.set()

    async def event(
        self, name: str, after: int = 0, master: bool = False, **fields: object
    ) -> dict[str, Any]:
        """The first log record `name` (from index `after`) with `fields`, of the master
        only (`master`: no `worker` key); 30 s at most."""
        async with asyncio.timeout(30):
            while True:
                for record in self.events[after:]:
                    if (
                        record.get("event") == name
                        and all(record.get(k) == v for k, v in fields.items())
                        and not (master and "worker" in record)
                    ):
                        return record
                self._new.clear()
                assert self.process is not None
                if self.process.returncode is not None and self._reader is not None:
                    await self._reader
                    raise AssertionError(f"process ended before logging {name!r}")
                await self._new.wait()

    def workers(self) -> list[int]:
        """PIDs of the master's children (its workers)."""
        assert self.process is not None
        pid = self.process.pid
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]

    def signal(self, signum: int) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    async def wait(self) -> int:
        assert self.process is not None
        async with asyncio.timeout(60):
            return await self.process.wait()

    async def stop(self) -> None:
        if self.process is not None and self.process.returncode is None:
            children = self.workers()
            self.process.kill()
            await self.process.wait()
            for pid in children:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        if self._reader is not None:
            self._reader.cancel()


@contextlib.asynccontextmanager
async def node_process(config: Path, cwd: Path | None = None) -> AsyncIterator[NodeProcess]:
    node = NodeProcess(config, cwd)
    try:
        yield await node.start()
    finally:
        await node.stop()
