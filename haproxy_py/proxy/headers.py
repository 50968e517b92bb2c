"""Rewriting request and response heads as they pass the proxy (pure, bytes in and out).

Hop-by-hop headers (RFC 9110 7.6.1: Connection, Proxy-Connection, Keep-Alive,
TE, Transfer-Encoding, Upgrade, and every header named in Connection) belong to
one connection, so they are dropped. Framing (Content-Length or the proxy's own
chunked) and Host are never copied as lines: each head writes them from the
parsed facts, so a `Connection: Content-Length` (or `Host`, or
`Transfer-Encoding`) cannot strip them while the body still flows (the classic
way to smuggle a request past a proxy).

Requests get Host, X-Forwarded-For (the client's address, appended to the
client's list only when the listener trusts it), X-Forwarded-Proto,
X-Forwarded-Host, X-Real-IP and Via; the client's own X-Real-IP and Forwarded
are dropped, and so is every header whose name holds `_` (nginx's
`underscores_in_headers off`: CGI-style servers map `_` and `-` to the same
name, so `Content_Length` must never reach them). Responses get
`Via: 1.1 <node>`. Header names keep the case the peer sent.
"""

from __future__ import annotations

import re
from http import HTTPStatus

Headers = list[tuple[bytes, bytes]]

HOP_BY_HOP = frozenset(
    {b"connection", b"proxy-connection", b"keep-alive", b"te", b"transfer-encoding", b"upgrade"}
)
# What a Connection header may never nominate for removal: the proxy writes these itself.
_NEVER_NOMINATED = frozenset({b"host", b"content-length", b"transfer-encoding"})
_CLIENT_IP_HEADERS = frozenset(
    {b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host", b"x-real-ip", b"forwarded"}
)
# Names the one pass over a head looks at; every other header is forwarded as it is.
_REQUEST_SPECIAL = HOP_BY_HOP | _CLIENT_IP_HEADERS | {b"host", b"content-length", b"via"}
_RESPONSE_SPECIAL = HOP_BY_HOP | {b"content-length"}

# RFC 9112 §3.2 / RFC 3986 §3.2.2: reg-name or IP-literal, then an optional port.
_HOST = re.compile(rb"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-._~!$&'()*+,;=%]+)(?::[0-9]{0,5})?")


class RequestFacts:
    """What routing, balancing and framing need from a request's headers, and the
    end-to-end header lines to forward, from one pass over them."""

    __slots__ = (
        "chunked",
        "content_length",
        "fields",
        "forwarded_for",
        "host",
        "hosts",
        "transfer_encoding",
        "upgrade",
        "via",
    )

    def __init__(self, headers: Headers, underscores: bool = False) -> None:
        self.host: bytes | None = None
        self.hosts = 0  # how many Host lines (RFC 9112 §3.2: exactly one in HTTP/1.1)
        self.content_length: int | None = None
        self.transfer_encoding: bytes | None = None
        self.chunked = False  # a Transfer-Encoding (only plain chunked gets past the checks)
        self.upgrade: bytes | None = None
        self.forwarded_for: bytes | None = None
        self.via: bytes | None = None
        named: frozenset[bytes] | None = None  # extra headers the Connection header names
        out: list[bytes] = []
        for name, value in headers:
            lname = name.lower()
            if lname not in _REQUEST_SPECIAL:
                if underscores or b"_" not in name:
                    out += (name, b": ", value, b"\r\n")
            elif lname == b"host":
                self.host = value
                self.hosts += 1
            elif lname == b"content-length":
                self.content_length = int(value)  # llhttp took digits only, and one value
            elif lname == b"transfer-encoding":
                self.transfer_encoding = value
                self.chunked = True
            elif lname == b"upgrade":
                self.upgrade = value
            elif lname == b"x-forwarded-for":
                self.forwarded_for = (
                    value if self.forwarded_for is None else self.forwarded_for + b", " + value
                )
            elif lname == b"via":
                self.via = value if self.via is None else self.via + b", " + value
            elif lname == b"connection":
                extra = connection_tokens(value) - HOP_BY_HOP - _NEVER_NOMINATED
                if extra:
                    named = extra if named is None else named | extra
        if named:
            out = _without(headers, _REQUEST_SPECIAL | named, underscores)
        self.fields = b"".join(out)

    def websocket(self) -> bool:
        """Whether `websocket` is one of the Upgrade tokens (a token, not a substring)."""
        return self.upgrade is not None and b"websocket" in upgrade_protocols(self.upgrade)


# One header line of a head llhttp accepted: CRLF before it, no space before the colon, the
# value without its leading whitespace (llhttp keeps trailing whitespace, and so does this).
_LINE = re.compile(rb"\r\n([^:\r\n]+):[ \t]*([^\r\n]*)")


def header_lines(head: bytes) -> Headers:
    """The (name, value) lines of a raw head (status or request line first), as llhttp
    hands them to per-header callbacks."""
    return _LINE.findall(head)


def connection_tokens(value: bytes) -> frozenset[bytes]:
    return frozenset(t.strip().lower() for t in value.split(b",") if t.strip())


def upgrade_protocols(value: bytes) -> frozenset[bytes]:
    """The protocol names of an Upgrade header (`websocket`, `h2c`...), without versions."""
    return frozenset(t.partition(b"/")[0] for t in connection_tokens(value))


def is_chunked_only(transfer_encoding: bytes) -> bool:
    """Whether a request's Transfer-Encoding is just `chunked` (the only coding relayed)."""
    return transfer_encoding.strip().lower() == b"chunked"


def valid_host(value: bytes) -> bool:
    return _HOST.fullmatch(value) is not None


def _without(headers: Headers, drop: frozenset[bytes], underscores: bool = True) -> list[bytes]:
    """Header lines except those named in `drop` (the rare pass when Connection names more)."""
    out: list[bytes] = []
    for name, value in headers:
        if name.lower() not in drop and (underscores or b"_" not in name):
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
    host: bytes,
    client_ip: str,
    proto: bytes,
    via: bytes,
    keep_forwarded_for: bool = False,
    upgrade: bool = False,
) -> bytes:
    """The request head for the backend (always HTTP/1.1, keep-alive unless upgrading).

    `host` is what the backend must see (the URI's authority in absolute form);
    `keep_forwarded_for` appends to the client's X-Forwarded-For instead of
    replacing it (for a trusted proxy in front).
    """
    ip = client_ip.encode()
    xff = ip
    if keep_forwarded_for and facts.forwarded_for is not None:
        xff = facts.forwarded_for + b", " + ip
    out = [method, b" ", url, b" HTTP/1.1\r\nHost: ", host, b"\r\n", facts.fields]
    out += (b"X-Forwarded-For: ", xff, b"\r\nX-Real-IP: ", ip)
    out += (b"\r\nX-Forwarded-Proto: ", proto, b"\r\n")
    if facts.host is not None:
        out += (b"X-Forwarded-Host: ", host, b"\r\n")
    out += (b"Via: ", facts.via + b", 1.1 " if facts.via else b"1.1 ", via, b"\r\n")
    if upgrade:
        out.append(b"Connection: Upgrade\r\nUpgrade: websocket\r\n")
    elif facts.transfer_encoding is not None:
        out.append(b"Transfer-Encoding: chunked\r\n")
    elif facts.content_length is not None:
        out.append(b"Content-Length: %d\r\n" % facts.content_length)
    out.append(b"\r\n")
    return b"".join(out)


class ResponseFacts:
    """Framing facts of a backend response and its end-to-end header lines (one pass).

    `codings` are the transfer codings before a final `chunked` (`gzip` of
    `gzip, chunked`); a Transfer-Encoding that does not end in chunked makes the
    body close-delimited (RFC 9112 §6.3).
    """

    __slots__ = ("chunked", "codings", "content_length", "delimited", "fields", "upgrade")

    def __init__(self, headers: Headers) -> None:
        self.content_length: bytes | None = None
        self.chunked = False
        self.codings: bytes | None = None
        self.upgrade: bytes | None = None
        named: frozenset[bytes] | None = None
        out: list[bytes] = []
        for name, value in headers:
            lname = name.lower()
            if lname not in _RESPONSE_SPECIAL:
                out += (name, b": ", value, b"\r\n")
            elif lname == b"content-length":
                self.content_length = value.strip()
            elif lname == b"transfer-encoding":
                codings = [t.strip() for t in value.split(b",") if t.strip()]
                self.chunked = bool(codings) and codings[-1].lower() == b"chunked"
                if self.chunked:
                    codings.pop()
                self.codings = b", ".join(codings) or None
            elif lname == b"upgrade":
                self.upgrade = value
            elif lname == b"connection":
                extra = connection_tokens(value) - HOP_BY_HOP - _NEVER_NOMINATED
                if extra:
                    named = extra if named is None else named | extra
        if named:
            out = _without(headers, _RESPONSE_SPECIAL | named)
        self.fields = b"".join(out)
        # Whether the body's end is known without a close (Content-Length or chunked).
        self.delimited = self.chunked or (self.content_length is not None and self.codings is None)


# The lines of a response head that ask for rewriting it: hop-by-hop ones, and its framing.
_RESPONSE_NAMED = re.compile(
    rb"\r\n(connection|proxy-connection|keep-alive|te|transfer-encoding|upgrade|content-length):",
    re.IGNORECASE,
)


# What the hop-by-hop and framing lines of heads seen lately allow (a backend sends the
# same few heads again and again, and a search that ignores case costs more than the rest
# of a head's handling): no such line, only its one Content-Length, or something else.
_NO_LINE, _LENGTH_ONLY, _OTHER = 0, 1, 2
_SEEN: dict[bytes, int] = {}
_SEEN_MAX = 256  # heads remembered (then it starts again)
_SEEN_SIZE = 1024  # the longest head remembered


def passes_through(head: bytes, bodyless: bool) -> bool:
    """Whether a backend's final response head may reach the client as it came, with only
    the proxy's lines (`response_tails`) added: HTTP/1.1, no hop-by-hop line, and framed
    by its one Content-Length (llhttp refuses a second) or without a body."""
    if not head.startswith(b"HTTP/1.1 "):
        return False
    kind = _SEEN.get(head, -1)
    if kind < 0:
        kind = _named_lines(head)
        if len(head) <= _SEEN_SIZE:
            if len(_SEEN) >= _SEEN_MAX:
                _SEEN.clear()
            _SEEN[head] = kind
    return bodyless if kind == _NO_LINE else kind == _LENGTH_ONLY


def _named_lines(head: bytes) -> int:
    named = _RESPONSE_NAMED.findall(head)
    if not named:
        return _NO_LINE
    return _LENGTH_ONLY if len(named) == 1 and named[0].lower() == b"content-length" else _OTHER


def response_tails(via: bytes) -> tuple[bytes, bytes, bytes]:
    """The lines that end a passed-through head: for a kept-alive HTTP/1.1 client, for a
    connection that closes after it, for a kept-alive HTTP/1.0 client."""
    line = b"Via: 1.1 " + via + b"\r\n"
    return (
        line + b"\r\n",
        line + b"Connection: close\r\n\r\n",
        line + b"Connection: keep-alive\r\n\r\n",
    )


def status_reason(head: bytes) -> bytes:
    """The reason phrase of a raw response head's status line (empty if it has none)."""
    parts = head[: head.find(b"\r\n")].split(b" ", 2)
    return parts[2] if len(parts) > 2 else b""


def response_head(
    status: int, reason: bytes, facts: ResponseFacts, *, via: bytes, framing: bytes
) -> bytes:
    """The response head for the client; `framing` is the Content-Length/Transfer-Encoding/
    Connection lines the proxy decided on."""
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


def simple_response(
    status: int, text: str, *, via: bytes, close: bool, extra: bytes = b""
) -> bytes:
    """A short plain-text answer made by the proxy itself (errors, 404, 503...).

    `text` is what the client may know: never a backend's name or address
    (those go to the log line).
    """
    body = text.encode() + b"\n"
    return b"".join(
        (
            b"HTTP/1.1 %d %s\r\n" % (status, _reason(status)),
            b"Content-Type: text/plain; charset=utf-8\r\n",
            b"Content-Length: %d\r\n" % len(body),
            extra,
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
