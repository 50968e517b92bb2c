"""Rewriting request and response heads as they pass the proxy (pure, bytes in and out).

Hop-by-hop headers (RFC 9110 7.6.1: Connection, Proxy-Connection, Keep-Alive,
TE, Transfer-Encoding, Upgrade, and every header named in Connection) belong to
one connection, so they are dropped and the proxy writes its own framing.
Requests get X-Forwarded-For (appended), -Proto and -Host (replaced); responses
get `Via: 1.1 <node>`. Header names keep the case the peer sent.
"""

from __future__ import annotations

from http import HTTPStatus

Headers = list[tuple[bytes, bytes]]

HOP_BY_HOP = frozenset(
    {b"connection", b"proxy-connection", b"keep-alive", b"te", b"transfer-encoding", b"upgrade"}
)
_REPLACED_ON_REQUEST = frozenset({b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host"})
# Names the one pass over a head looks at; every other header is forwarded as it is.
_REQUEST_SPECIAL = HOP_BY_HOP | _REPLACED_ON_REQUEST | {b"host", b"content-length"}
_RESPONSE_SPECIAL = HOP_BY_HOP | {b"content-length"}


class RequestFacts:
    """What routing, balancing and framing need from a request's headers, and the
    end-to-end header lines to forward, from one pass over them."""

    __slots__ = ("chunked", "content_length", "fields", "forwarded_for", "host", "upgrade")

    def __init__(self, headers: Headers) -> None:
        self.host: bytes | None = None
        self.content_length: bytes | None = None
        self.chunked = False
        self.upgrade: bytes | None = None
        self.forwarded_for: bytes | None = None
        named: frozenset[bytes] | None = None  # extra headers the Connection header names
        out: list[bytes] = []
        for name, value in headers:
            lname = name.lower()
            if lname not in _REQUEST_SPECIAL:
                out += (name, b": ", value, b"\r\n")
            elif lname == b"host":
                self.host = value
                out += (name, b": ", value, b"\r\n")
            elif lname == b"content-length":
                self.content_length = value
                out += (name, b": ", value, b"\r\n")
            elif lname == b"transfer-encoding":
                self.chunked = True
            elif lname == b"upgrade":
                self.upgrade = value
            elif lname == b"x-forwarded-for":
                self.forwarded_for = (
                    value if self.forwarded_for is None else self.forwarded_for + b", " + value
                )
            elif lname == b"connection":
                extra = connection_tokens(value) - HOP_BY_HOP
                if extra:
                    named = extra if named is None else named | extra
        if named:
            out = _without(headers, HOP_BY_HOP | named | _REPLACED_ON_REQUEST)
        self.fields = b"".join(out)


def connection_tokens(value: bytes) -> frozenset[bytes]:
    return frozenset(t.strip().lower() for t in value.split(b",") if t.strip())


def _without(headers: Headers, drop: frozenset[bytes]) -> list[bytes]:
    """Header lines except those named in `drop` (the rare pass when Connection names more)."""
    out: list[bytes] = []
    for name, value in headers:
        if name.lower() not in drop:
            out += (name, b": ", value, b"\r\n")
    return out


def host_without_port(host: bytes) -> str:
    """The routing name of a Host header: lower case, no port, IPv6 brackets kept."""
    text = host.decode("latin-1").strip().lower()
    if text.startswith("["):
        return text.partition("]")[0] + "]"
    return text.partition(":")[0]


def request_head(
    method: bytes,
    url: bytes,
    facts: RequestFacts,
    *,
    client_ip: str,
    proto: bytes,
    default_host: bytes,
    upgrade: bool,
) -> bytes:
    """The request head for the backend (always HTTP/1.1, keep-alive unless upgrading)."""
    xff = client_ip.encode()
    if facts.forwarded_for is not None:
        xff = facts.forwarded_for + b", " + xff
    out = [method, b" ", url, b" HTTP/1.1\r\n", facts.fields]
    if facts.host is None:
        out += (b"Host: ", default_host, b"\r\n")
    out += (b"X-Forwarded-For: ", xff, b"\r\nX-Forwarded-Proto: ", proto, b"\r\n")
    if facts.host is not None:
        out += (b"X-Forwarded-Host: ", facts.host, b"\r\n")
    if upgrade and facts.upgrade is not None:
        out += (b"Connection: Upgrade\r\nUpgrade: ", facts.upgrade, b"\r\n")
    elif facts.chunked:
        out.append(b"Transfer-Encoding: chunked\r\n")
    out.append(b"\r\n")
    return b"".join(out)


class ResponseFacts:
    """Framing facts of a backend response and its end-to-end header lines (one pass)."""

    __slots__ = ("chunked", "content_length", "fields", "upgrade")

    def __init__(self, headers: Headers) -> None:
        self.content_length: bytes | None = None
        self.chunked = False
        self.upgrade: bytes | None = None
        named: frozenset[bytes] | None = None
        out: list[bytes] = []
        for name, value in headers:
            lname = name.lower()
            if lname not in _RESPONSE_SPECIAL:
                out += (name, b": ", value, b"\r\n")
            elif lname == b"content-length":
                self.content_length = value
                out += (name, b": ", value, b"\r\n")
            elif lname == b"transfer-encoding":
                self.chunked = True
            elif lname == b"upgrade":
                self.upgrade = value
            elif lname == b"connection":
                extra = connection_tokens(value) - HOP_BY_HOP
                if extra:
                    named = extra if named is None else named | extra
        if named:
            out = _without(headers, HOP_BY_HOP | named)
        self.fields = b"".join(out)


def response_head(
    status: int, reason: bytes, facts: ResponseFacts, *, via: bytes, framing: bytes
) -> bytes:
    """The response head for the client; `framing` is the Transfer-Encoding/Connection lines."""
    return b"HTTP/1.1 %d %b\r\n%bVia: 1.1 %b\r\n%b\r\n" % (
        status,
        reason or _reason(status),
        facts.fields,
        via,
        framing,
    )


def _reason(status: int) -> bytes:
    try:
        return HTTPStatus(status).phrase.encode()
    except ValueError:
        return b"Unknown"


def simple_response(status: int, text: str, *, via: bytes, close: bool) -> bytes:
    """A short plain-text answer made by the proxy itself (errors, 404, 503...)."""
    body = text.encode() + b"\n"
    return b"".join(
        (
            b"HTTP/1.1 %d %s\r\n" % (status, _reason(status)),
            b"Content-Type: text/plain; charset=utf-8\r\n",
            b"Content-Length: %d\r\n" % len(body),
            b"Via: 1.1 ",
            via,
            b"\r\n",
            b"Connection: close\r\n" if close else b"",
            b"\r\n",
            body,
        )
    )


def cookie_value(cookie_headers: list[bytes], name: bytes) -> bytes | None:
    """The value of cookie `name` from the request's Cookie headers, if present."""
    for header in cookie_headers:
        for part in header.split(b";"):
            key, sep, value = part.strip().partition(b"=")
            if sep and key == name:
                return value
    return None
