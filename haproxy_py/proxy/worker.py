"""One worker process: a uvloop event loop serving the listeners the master bound.

Started by the master as `python -m haproxy_py.proxy.worker FD LEVEL FORMAT INDEX`, FD its
end of the control socketpair; everything else arrives on it: the config, the
listening sockets (its own socket of each listener's SO_REUSEPORT group), the
shared count table, the master's health verdicts. It runs a `ProxyServer`
with itself as the `Plane`: no admin API and no health checks of its own;
passive health results go to the master, which judges and pushes the verdict
to every worker. SIGTERM (systemd signals the whole unit) drains it; it exits
when the master asks or is gone.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import socket
import sys

import structlog
import uvloop

from haproxy_py.cluster.config import LoggingConfig
from haproxy_py.logging import configure
from haproxy_py.proxy.control import Channel, Message
from haproxy_py.proxy.listeners import AddressDrain
from haproxy_py.proxy.runtime import Runtime
from haproxy_py.proxy.server import ProxyServer
from haproxy_py.proxy.shared import CountTable

log = structlog.get_logger(__name__)

Health = dict[tuple[str, str], bool]  # (backend, address) -> up


class Worker:
    """The `Plane` of this process's `ProxyServer`, and the handler of the master's messages."""

    def __init__(self) -> None:
        self.index = 0
        self.table: CountTable | None = None
        self.rows: dict[tuple[str, str], int] = {}
        self.health: Health = {}
        self.sockets: dict[tuple[str, int], socket.socket] = {}
        self.server: ProxyServer | None = None
        self.channel: Channel | None = None
        self.done = asyncio.Event()
        self._draining: asyncio.Task[bool] | None = None

    # -- Plane
    def passive(self, backend: str, address: str, ok: bool, error: str) -> None:
        if self.channel is not None:
            self.channel.send(
                {"op": "passive", "backend": backend, "address": address, "ok": ok, "error": error}
            )

    def socket(self, host: str, port: int) -> socket.socket:
        key = (host, port)
        if key not in self.sockets:  # undrain asks by the bound address: match the port
            key = next((k for k in self.sockets if k[1] == port), key)
        sock = self.sockets.pop(key, None)
        if sock is None:
            raise OSError(0, f"cannot listen on {host}:{port}: no socket from the master")
        return sock

    def prepare(self, runtime: Runtime) -> None:
        assert self.table is not None
        for backend in runtime.backends.values():
            for server in backend.servers:
                key = (backend.name, server.address)
                server.share(self.table.cells, self.rows[key], self.table.columns, self.index)
                server.up = self.health.get(key, server.up)

    # -- messages
    def _take(self, message: Message, fds: list[int]) -> None:
        """Keep what a start/reload/undrain message carries: sockets, rows, health."""
        if "rows" in message:
            self.rows = message["rows"]
        if "health" in message:
            self.health = message["health"]
        for (host, port), fd in zip(message.get("sockets", ()), fds, strict=False):
            sock = socket.socket(fileno=fd)
            sock.setblocking(False)
            self.sockets[host, port] = sock

    async def handle(self, message: Message, fds: list[int]) -> Message | None:
        op = message["op"]
        if op == "start":
            self.index = message["index"]
            self.table = CountTable(fds[0], message["table_rows"], message["table_columns"])
            self._take(message, fds[1:])
            self.server = ProxyServer(message["config"], message["node"], plane=self)
            await self.server.start()
            return {"pid": os.getpid()}
        server = self.server
        assert server is not None
        if op == "health":
            self.health[message["backend"], message["address"]] = message["up"]
            backend = server.runtime.backends.get(message["backend"])
            if backend is not None:
                backend.set_up(message["address"], message["up"])
            return None
        if op == "traffic":
            return {"report": await server.traffic()}
        if op == "reload":
            self._take(message, fds)
            await server.reload(message["config"])
            return {}
        if op == "drain":
            clean = await self.drain(message.get("grace"))
            return {"clean": clean, "closed_at_timeout": server.closed_at_timeout}
        if op == "undrain":
            self._take(message, fds)
            await server.undrain()
            return {}
        if op == "drain_address":
            started: AddressDrain = server.drain_address(message["address"])
            return {"drain": dataclasses.asdict(started)}
        if op == "hold_address":
            held = await server.address_hold(message["address"])
            return {"hold": dataclasses.asdict(held)}
        if op == "unhold_address":
            await server.address_unhold(message["address"])
            return {}
        if op == "stop":
            self.done.set()
            return {}
        raise ValueError(f"unknown control message {op!r}")

    async def drain(self, grace: float | None = None) -> bool:
        """Drain once, however many ask (SIGTERM and the master both do on a stop)."""
        assert self.server is not None
        if self._draining is None or (self._draining.done() and not self.server.draining):
            self._draining = asyncio.get_running_loop().create_task(self.server.drain(grace))
        return await asyncio.shield(self._draining)


async def serve(fd: int) -> None:
    loop = asyncio.get_running_loop()
    worker = Worker()
    worker.channel = Channel(socket.socket(fileno=fd), worker.handle, worker.done.set)
    loop.add_signal_handler(signal.SIGINT, lambda: None)  # the master stops us
    loop.add_signal_handler(signal.SIGTERM, lambda: loop.create_task(_drain_then_stop(worker)))
    loop.add_signal_handler(signal.SIGHUP, lambda: None)  # the master reloads us
    try:
        await worker.done.wait()
    finally:
        if worker.server is not None:
            await worker.server.stop()


async def _drain_then_stop(worker: Worker) -> None:
    if worker.server is not None:
        await worker.drain()
    worker.done.set()


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    fd, level, form, index = int(args[0]), args[1], args[2], int(args[3])
    configure(level, LoggingConfig(level, form).json)
    structlog.contextvars.bind_contextvars(worker=index)
    uvloop.run(serve(fd))


if __name__ == "__main__":
    main()
