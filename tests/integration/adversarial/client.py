"""Raw-socket clients and a response splitter for the adversarial suite."""

from __future__ import annotations

import asyncio
import contextlib
import tomllib
from dataclasses import dataclass, field

from httptools import HttpParserError, HttpParserUpgrade, HttpResponseParser

from haproxy_py.configfile import Table
from haproxy_py.proxy.config import ProxyConfig, parse_proxy
from haproxy_py.proxy.server import ProxyServer

KEY = b"dGhlIHNhbXBsZSBub25jZQ=="
HANDSHAKE = (
    b"Host: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
    b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: " + KEY + b"\r\n\r\n"
)


def config(
    backend: str, proxy: str = "", routes: str = "", health: str = "fall = 3"
) -> ProxyConfig:
    """One listener and admin on port 0; `routes` come before the catch-all route to `app`."""
    text = (
        '[admin]\nbind = "127.0.0.1:0"\n[[listeners]]\nname = "web"\nbind = "127.0.0.1:0"\n'
        f'{routes}\n[[routes]]\nbackend = "app"\n[backends.app]\nservers = ["{backend}"]\n'
        f"health = {{ {health} }}\n{proxy}"
    )
    return parse_proxy(Table(tomllib.loads(text), "adversarial.toml", ""))


async def exchange(server: ProxyServer, data: bytes | list[bytes], pause: float = 0.0) -> bytes:
    """Send raw bytes (a list: one write each, `pause` apart), read until the proxy closes."""
    reader, writer = await asyncio.open_connection(*server.address("web"))
    try:
        for chunk in [data] if isinstance(data, bytes) else data:
            writer.write(chunk)
            await writer.drain()
            await asyncio.sleep(pause)
        async with asyncio.timeout(30):
            return await read_until_closed(reader)
    finally:
        writer.close()


async def read_until_closed(reader: asyncio.StreamReader) -> bytes:
    """What arrived before the close, also when the close was a reset."""
    got = bytearray()
    with contextlib.suppress(ConnectionError):
        while chunk := await reader.read(65536):
            got += chunk
    return bytes(got)


@dataclass
class Response:
    status: int = 0
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    complete: bool = False

    def header(self, name: str) -> list[str]:
        return [v for n, v in self.headers if n.lower() == name.lower()]


class _Splitter:
    def __init__(self) -> None:
        self.responses: list[Response] = []
        self.parser = HttpResponseParser(self)

    def on_headers_complete(self) -> None:
        self.responses[-1].status = self.parser.get_status_code()

    def on_message_begin(self) -> None:
        self.responses.append(Response())

    def on_header(self, name: bytes, value: bytes) -> None:
        self.responses[-1].headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_body(self, body: bytes) -> None:
        self.responses[-1].body += body

    def on_message_complete(self) -> None:
        self.responses[-1].complete = True


def responses(raw: bytes) -> list[Response]:
    """The responses in what a client read, in order (1xx included); the last may be partial."""
    splitter = _Splitter()
    with contextlib.suppress(HttpParserError, HttpParserUpgrade):  # a 101: the rest is not HTTP
        splitter.parser.feed_data(raw)
    return splitter.responses


def statuses(raw: bytes) -> list[int]:
    return [r.status for r in responses(raw)]
