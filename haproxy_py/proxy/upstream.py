"""One keep-alive connection to a backend server, parsing responses with httptools.

It serves one exchange at a time for the `ResponseSink` attached to it (the
client connection) and hands every parser event straight on (head, body
chunks, end), so bodies stream. The parser makes no call per header: the head
is handed on as the raw bytes llhttp accepted (CRLF lines, no folding, no space
before a colon), which the client side passes through whole when nothing in it
must be rewritten, and splits into lines only when something must. Between
exchanges it sits in its backend's idle pool; bytes arriving there, or left
over after a complete response, are a protocol error and close it (the next
exchange would start mid-message).

A backend mostly repeats its head (only Date changes, once a second): a read
that holds one whole response whose head is the bytes of the last one, framed
by its Content-Length alone and of the same size, is handed on without the
parser (the head was checked by llhttp when it first came).

The response head is bounded while it arrives (`head_limit` bytes of reads
that end inside it), as the client's is. A close is told apart from a reset:
a reset in the middle of a close-delimited body is a truncation.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Protocol, cast

from httptools import HttpParserError, HttpParserUpgrade, HttpResponseParser

from haproxy_py.proxy.balancer import Server
from haproxy_py.proxy.headers import ResponseFacts, header_lines, passes_through

CLOSED = "backend closed the connection"
RESET = "backend reset the connection"
_UNKNOWN: tuple[bytes, int, int, bool | None] = (b"", -1, 0, False)


class ResponseSink(Protocol):
    """What an upstream connection tells the client connection it serves."""

    def response_head(self, status: int, head: bytes, keep_alive: bool) -> None: ...

    def response_body(self, body: bytes) -> None: ...

    def response_complete(self, conn: UpstreamConnection) -> None: ...

    def upstream_failed(self, conn: UpstreamConnection, error: str) -> None: ...

    def upstream_upgraded(self, conn: UpstreamConnection, tail: bytes) -> None: ...

    def flush(self) -> None: ...

    def pause_for_upstream(self) -> None: ...

    def resume_for_upstream(self) -> None: ...


class UpstreamConnection(asyncio.Protocol):
    __slots__ = (
        "client",
        "forget",
        "head",
        "head_bytes",
        "head_limit",
        "idle_since",
        "in_head",
        "known",
        "parser",
        "raw",
        "reset_parser",
        "reused",
        "server",
        "skip_body",
        "status",
        "transport",
    )

    def __init__(
        self,
        server: Server,
        forget: Callable[[Server, UpstreamConnection], None],
        head_limit: int,
    ) -> None:
        self.server = server
        self.forget = forget  # called when an idle (pooled) connection closes
        self.head_limit = head_limit
        self.transport: asyncio.Transport
        self.parser: HttpResponseParser | None = HttpResponseParser(self)
        self.client: ResponseSink | None = None
        self.reused = False
        self.skip_body = False
        self.reset_parser = False
        self.in_head = True
        self.head_bytes = 0  # bytes of reads that ended inside the head (or completed it)
        self.idle_since = 0.0  # when it went back to the pool
        self.status = 0
        self.raw = b""  # bytes from the start of the head due until the final head is whole
        self.head = b""  # the last complete head, status line to blank line
        # The last response that came whole in one read: its head, its length and status,
        # and whether it is framed by its Content-Length alone (`_framed`; None: not yet
        # looked at): then the same head again frames a body of the same size.
        self.known = _UNKNOWN

    def begin(self, client: ResponseSink, skip_body: bool) -> None:
        """Serve one exchange; `skip_body` for HEAD, whose response has no body whatever it says."""
        if self.reset_parser or self.parser is None:
            self.parser = HttpResponseParser(self)
            self.reset_parser = False
        self.client = client
        self.skip_body = skip_body
        self.status = 0
        self.in_head = True
        self.head_bytes = 0
        self.raw = b""

    @property
    def received(self) -> bool:
        """Whether a byte of this exchange's response arrived (every read while the head
        is due is counted, and a complete head means bytes came)."""
        return self.head_bytes > 0 or not self.in_head

    def detach(self) -> None:
        """The socket now belongs to a tunnel: drop the HTTP state (and the parser's cycle)."""
        self.client = None
        self.parser = None
        self.head = self.raw = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        parser = self.parser
        client = self.client
        if client is None or parser is None:
            self.transport.close()  # a backend must not talk while idle
            return
        fresh = self.in_head and not self.raw  # the read starts a response
        if fresh:
            head, size, status, framed = self.known
            if len(data) == size and data.startswith(head) and not self.skip_body:
                if framed is None:
                    framed = self._framed()
                    self.known = (head, size, status, framed)
                if framed:
                    self._repeat(client, head, status, data)
                    return
        if self.in_head:
            self.head_bytes += len(data)
        if self.status < 200:  # the final head is still due: keep its bytes
            self.raw = self.raw + data if self.raw else data
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
            client = self.client
            if client is not None:
                if self.in_head and self.head_bytes > self.head_limit:
                    self.reset_parser = True
                    client.upstream_failed(self, "response head from backend too large")
                else:
                    client.flush()
            elif fresh:  # one whole response (bytes after it close the connection)
                known = self.known
                if known[1] != len(data) or known[0] != self.head:
                    self.known = (self.head, len(data), self.status, None)

    def _framed(self) -> bool:
        """Whether the remembered response, sent again, may skip the parser: a final answer
        with a body, framed by its one Content-Length alone, and exactly that long. (Checked
        when its head comes again; most heads never do.)"""
        head, size, status, _ = self.known
        if 200 <= status < 300 and status != 204 and passes_through(head, False):
            length = ResponseFacts(header_lines(head)).content_length
            return length is not None and int(length) == size - len(head)
        return False

    def _repeat(self, client: ResponseSink, head: bytes, status: int, data: bytes) -> None:
        """The parser events of a response whose head is the remembered one, without parsing
        it again: its one Content-Length (no other framing) says the body is the rest of
        `data`."""
        self.head_bytes = len(data)
        self.in_head = False
        self.head, self.status = head, status
        client.response_head(status, head, True)
        if len(data) > len(head):
            client.response_body(data[len(head) :])
        if self.client is client:
            client.response_complete(self)

    def on_message_begin(self) -> None:
        if self.client is None:
            # Bytes after a complete response: the next exchange would start mid-message.
            self.transport.close()
            return
        self.in_head = True

    def on_headers_complete(self) -> None:
        parser, client = self.parser, self.client
        assert parser is not None
        self.in_head = False
        # llhttp accepted the head (CRLF lines), so it ends at the first blank line; a 1xx
        # head has no body, so the next head starts right after it.
        raw = self.raw
        end = raw.index(b"\r\n\r\n") + 4
        head = self.head = raw if end == len(raw) else raw[:end]
        status = self.status = parser.get_status_code()
        self.raw = raw[end:] if status < 200 else b""
        if len(head) > self.head_limit and _size(header_lines(head)) > self.head_limit:
            # A head that came whole in one large read (only then are the lines counted).
            raise ValueError("response head from backend too large")  # stops the parser
        if status == 101 or client is None:
            return  # the switch happens when the parser stops at the upgrade
        client.response_head(status, head, parser.should_keep_alive())
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
            client.upstream_failed(self, CLOSED if exc is None else RESET)
        else:
            self.forget(self.server, self)


def _size(headers: list[tuple[bytes, bytes]]) -> int:
    return sum(len(name) + len(value) for name, value in headers)
