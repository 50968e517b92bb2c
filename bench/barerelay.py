"""The floor under haproxy-py's WebSocket relay: bytes relayed on uvloop, and nothing else.

`python bench/barerelay.py PORT BACKEND` accepts on 127.0.0.1:PORT, connects each
client to BACKEND (host:port) and writes every read to the other socket: no
parsing, no frame tracking, no counting, no logs. Its CPU per message is what
the event loop and the interpreter cost for one read and one write each way,
the part of haproxy-py's figure that no change to the proxy's own code can
remove (bench/README.md). Not a proxy: nothing here is safe at an edge.
"""

from __future__ import annotations

import asyncio
import sys
from typing import cast

import uvloop


class Half(asyncio.Protocol):
    """One socket; what it reads goes to `peer` (held back until the peer is connected)."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.peer: Half | None = None
        self.early: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.write(data)
        else:
            self.early.append(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.close()


class Client(Half):
    backend: tuple[str, int] = ("127.0.0.1", 0)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        asyncio.get_running_loop().create_task(self.connect())

    async def connect(self) -> None:
        upstream = Half()
        try:
            await asyncio.get_running_loop().create_connection(lambda: upstream, *self.backend)
        except OSError:
            if self.transport is not None:
                self.transport.close()
            return
        assert upstream.transport is not None and self.transport is not None
        if self.transport.is_closing():  # the client left while this connected
            upstream.transport.close()
            return
        upstream.peer, self.peer = self, upstream
        for data in self.early:
            upstream.transport.write(data)
        self.early.clear()


async def serve(port: int) -> None:
    server = await asyncio.get_running_loop().create_server(Client, "127.0.0.1", port, backlog=4096)
    async with server:
        await server.serve_forever()


def main(argv: list[str]) -> None:
    port, backend = int(argv[0]), argv[1]
    host, _, backend_port = backend.rpartition(":")
    Client.backend = (host, int(backend_port))
    uvloop.run(serve(port))


if __name__ == "__main__":
    main(sys.argv[1:])
