"""One keep-alive connection to a backend server, parsing responses with httptools.

It serves one exchange at a time for the `ClientConnection` attached to it
and hands every parser event straight on (head, body chunks, end), so bodies
stream. Between exchanges it sits in its backend's idle pool; bytes arriving
there are a protocol error and close it.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, cast

from httptools import HttpParserError, HttpParserUpgrade, HttpResponseParser

from haproxy_py.proxy.balancer import Server

if TYPE_CHECKING:
    from haproxy_py.proxy.frontend import ClientConnection
    from haproxy_py.proxy.runtime import Backend


class UpstreamConnection(asyncio.Protocol):
    __slots__ = (
        "backend",
        "client",
        "headers",
        "parser",
        "reason",
        "reset_parser",
        "reused",
        "server",
        "skip_body",
        "status",
        "transport",
    )

    def __init__(self, backend: Backend, server: Server) -> None:
        self.backend = backend
        self.server = server
        self.transport: asyncio.Transport
        self.parser: HttpResponseParser | None = HttpResponseParser(self)
        self.client: ClientConnection | None = None
        self.reused = False
        self.skip_body = False
        self.reset_parser = False
        self.status = 0
        self.reason = b""
        self.headers: list[tuple[bytes, bytes]] = []

    def begin(self, client: ClientConnection, skip_body: bool) -> None:
        """Serve one exchange; `skip_body` for HEAD, whose response has no body whatever it says."""
        if self.reset_parser or self.parser is None:
            self.parser = HttpResponseParser(self)
            self.reset_parser = False
        self.client = client
        self.skip_body = skip_body
        self.status = 0

    def detach(self) -> None:
        """The socket now belongs to a tunnel: drop the HTTP state (and the parser's cycle)."""
        self.client = None
        self.parser = None
        self.headers = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        parser = self.parser
        if self.client is None or parser is None:
            self.transport.close()  # a backend must not talk while idle
            return
        try:
            parser.feed_data(data)
        except HttpParserUpgrade as exc:
            client = self.client
            if client is not None and self.status == 101:
                self.client = None
                client.upstream_upgraded(self, data[exc.args[0] :])
            elif client is not None:
                client.upstream_failed(self, "backend switched protocols unasked")
        except HttpParserError as exc:
            self.reset_parser = True
            if self.client is not None:
                self.client.upstream_failed(self, f"invalid response from backend: {exc}")
        else:
            if self.client is not None:
                self.client.flush()

    def on_message_begin(self) -> None:
        self.headers = []
        self.reason = b""

    def on_status(self, status: bytes) -> None:
        self.reason += status

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        parser, client = self.parser, self.client
        assert parser is not None
        status = self.status = parser.get_status_code()
        if status == 101 or client is None:
            return  # the switch happens when the parser stops at the upgrade
        client.response_head(status, self.reason, self.headers, parser.should_keep_alive())
        if self.skip_body and status >= 200 and self.client is client:
            self.reset_parser = True  # the parser would wait for a body that never comes
            client.response_complete(self)

    def on_body(self, body: bytes) -> None:
        if self.client is not None:
            self.client.response_body(body)

    def on_message_complete(self) -> None:
        if self.client is not None and self.status >= 200 and self.status != 101:
            self.client.response_complete(self)

    def pause_writing(self) -> None:
        if self.client is not None:
            self.client.pause_for_upstream()

    def resume_writing(self) -> None:
        if self.client is not None:
            self.client.resume_for_upstream()

    def connection_lost(self, exc: Exception | None) -> None:
        client = self.client
        if client is not None:
            self.client = None
            client.upstream_failed(self, "backend closed the connection")
        else:
            self.backend.forget(self.server, self)
