"""A plain keep-alive HTTP/1.1 backend that records every request it parses, per connection.

It is the naive server the smuggling attacks aim at: it frames requests
exactly as the head it is sent says (httptools), answers pipelined requests
in order and reuses its connections, so a request the proxy let through
unframed shows up here as an extra request. Paths pick a behaviour:

    /slow...            answer after 1 s                 /status/NNN     answer NNN
    /ws...              WebSocket: 101, then record the bytes (/ws/refuse: 403 keep-alive;
                        /ws/split: 101 with the first 104 bytes of a 1004-byte frame, the
                        rest when `release` is set)
    /conn-cl            Connection: Content-Length on a 5-byte response
    /te-gzip            Transfer-Encoding: gzip, delimited by the close
    /rst                half a close-delimited body, then a reset
    /extra              a 2-byte response followed by a second, unasked one
    /big-head           a response head over 100 KiB
    /stall-body         Content-Length 100, 10 bytes, then nothing
    /continue-stall     100 Continue, then nothing
    /close              record, then close without answering
    /garbage            an answer that is not HTTP
    /200k               200,000 bytes in one write
    /flood              10 MiB body (Content-Length)
    anything else       200 "c<conn> r<n> <METHOD> <path>"
"""

from __future__ import annotations

import asyncio
import socket
import struct
from dataclasses import dataclass, field

from httptools import HttpParserUpgrade, HttpRequestParser


@dataclass
class Seen:
    conn: int
    method: str
    path: str
    headers: list[tuple[str, str]]
    body: bytes = b""

    def header(self, name: str) -> list[str]:
        return [v for n, v in self.headers if n.lower() == name.lower()]


@dataclass
class Tunnel:
    conn: int
    received: bytearray = field(default_factory=bytearray)


SPLIT_FRAME = b"\x82\x7e" + struct.pack("!H", 1000) + bytes(range(250)) * 4  # 1004 bytes


class RecordingBackend:
    def __init__(self) -> None:
        self.seen: list[Seen] = []
        self.tunnels: list[Tunnel] = []
        self.conns = 0
        self.closed_conns = 0
        self.release = asyncio.Event()  # /ws/split sends the rest of its frame
        self.server: asyncio.Server | None = None
        self.port = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(lambda: _Conn(self), "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            self.server = None

    def paths(self) -> list[str]:
        return [s.path for s in self.seen]


class _Conn(asyncio.Protocol):
    def __init__(self, backend: RecordingBackend) -> None:
        backend.conns += 1
        self.backend = backend
        self.id = backend.conns
        self.n = 0
        self.parser = HttpRequestParser(self)
        self.transport: asyncio.Transport
        self.current: Seen | None = None
        self.queue: asyncio.Queue[Seen] = asyncio.Queue()
        self.tunnel: Tunnel | None = None
        self.task: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.task = asyncio.get_running_loop().create_task(self._answer())

    def connection_lost(self, exc: Exception | None) -> None:
        self.backend.closed_conns += 1
        if self.task is not None:
            self.task.cancel()

    def data_received(self, data: bytes) -> None:
        if self.tunnel is not None:
            self.tunnel.received += data
            return
        try:
            self.parser.feed_data(data)
        except HttpParserUpgrade as exc:
            self._complete()
            rest = data[exc.args[0] :]
            if not self.backend.seen[-1].path.startswith("/ws/refuse"):
                self.tunnel = Tunnel(self.id, bytearray(rest))
                self.backend.tunnels.append(self.tunnel)
            elif rest:
                self.parser = HttpRequestParser(self)  # a naive server parses on
                self.data_received(rest)
        except Exception:
            self.transport.close()

    def on_message_begin(self) -> None:
        self.current = Seen(self.id, "", "", [])

    def on_url(self, url: bytes) -> None:
        assert self.current is not None
        self.current.path += url.decode("latin-1")

    def on_header(self, name: bytes, value: bytes) -> None:
        assert self.current is not None
        self.current.headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        assert self.current is not None
        self.current.method = self.parser.get_method().decode()

    def on_body(self, body: bytes) -> None:
        assert self.current is not None
        self.current.body += body

    def on_message_complete(self) -> None:
        self._complete()

    def _complete(self) -> None:
        if self.current is not None:
            self.backend.seen.append(self.current)
            self.queue.put_nowait(self.current)
            self.current = None

    async def _answer(self) -> None:
        while True:
            seen = await self.queue.get()
            self.n += 1
            if not await self._respond(seen):
                return

    def _ok(self, seen: Seen, extra: bytes = b"") -> None:
        body = f"c{seen.conn} r{self.n} {seen.method} {seen.path}".encode()
        self.transport.write(
            b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%b\r\n%b" % (len(body), extra, body)
        )

    async def _respond(self, seen: Seen) -> bool:
        """Answer one request; False when the connection is done."""
        path, write = seen.path, self.transport.write
        if path.startswith("/ws"):
            return await self._websocket(seen)
        if path.startswith("/slow"):
            await asyncio.sleep(1.0)
        if path.startswith("/status/"):
            code = int(path[8:11])
            write(b"HTTP/1.1 %d X\r\nContent-Length: 2\r\n\r\nno" % code)
        elif path == "/conn-cl":
            write(
                b"HTTP/1.1 200 OK\r\nConnection: Content-Length\r\nContent-Length: 5\r\n\r\nhello"
            )
        elif path == "/te-gzip":
            write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nGZIPPED-BYTES")
            self.transport.close()
            return False
        elif path == "/rst":
            write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nhalf-a-body")
            await asyncio.sleep(0.2)
            sock = self.transport.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.transport.abort()
            return False
        elif path == "/extra":
            write(
                b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
                b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nEVIL!"
            )
        elif path == "/big-head":
            write(b"HTTP/1.1 200 OK\r\nX-Big: " + b"b" * 100_000 + b"\r\nContent-Length: 0\r\n\r\n")
        elif path == "/stall-body":
            write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789")
            await asyncio.sleep(3600)
        elif path == "/continue-stall":
            write(b"HTTP/1.1 100 Continue\r\n\r\n")
            await asyncio.sleep(3600)
        elif path == "/close":
            self.transport.close()
            return False
        elif path == "/garbage":
            write(b"NOT HTTP AT ALL\r\n\r\n")
        elif path == "/200k":
            write(b"HTTP/1.1 200 OK\r\nContent-Length: 200000\r\n\r\n" + b"s" * 200_000)
        elif path == "/flood":
            write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (10 << 20))
            for _ in range(160):
                write(b"f" * 65536)
                await asyncio.sleep(0)
        else:
            self._ok(seen)
        return True

    async def _websocket(self, seen: Seen) -> bool:
        write = self.transport.write
        if seen.path.startswith("/ws/refuse"):
            write(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 2\r\n\r\nno")
            return True
        head = (
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: x\r\n\r\n"
        )
        if seen.path.startswith("/ws/split"):
            write(head + SPLIT_FRAME[:104])
            await self.backend.release.wait()
            write(SPLIT_FRAME[104:])
        else:
            write(head)
        return False
