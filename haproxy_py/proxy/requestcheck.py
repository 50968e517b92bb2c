"""What the proxy decides from a request head alone, before routing (pure: no I/O, no clock).

llhttp (strict) already refuses the classic smuggling shapes; these are the
rules it leaves to the proxy:

* Host (RFC 9112 §3.2): HTTP/1.1 needs exactly one, and a valid one; in
  absolute form the URI's authority replaces it (§3.2.2).
* Transfer-Encoding (§6.1): only a plain `chunked` is relayed (501 else), and
  never in HTTP/1.0 (400): two hops could read such a body differently.
* Upgrade: a WebSocket handshake (RFC 6455 §4.2.1) has no body and speaks
  version 13 (426 with `Sec-WebSocket-Version: 13` else); another protocol
  (`h2c`...) is served as a plain request with Upgrade dropped, unless it has
  a body, which llhttp would hand over as "upgrade data" (501).
* Via: a request that already passed this node is a loop (508).

Refusals travel as `Reject`, which a parser callback may raise so the parser stops at once.
"""

from __future__ import annotations

from typing import Protocol, cast

from httptools import HttpParserError, parse_url

from haproxy_py.proxy.headers import RequestFacts, is_chunked_only, valid_host
from haproxy_py.proxy.wsframes import VERSION_PROBLEM, handshake_problem

# RFC 9110 §9.2.2: what a proxy may send again after a connection failed under it.
IDEMPOTENT = frozenset({b"GET", b"HEAD", b"PUT", b"DELETE", b"OPTIONS", b"TRACE"})


class Reject(Exception):
    """A request the proxy answers itself; `extra` are more header lines for the answer."""

    def __init__(self, status: int, text: str, extra: bytes = b"") -> None:
        super().__init__(text)
        self.status = status
        self.text = text
        self.extra = extra


def check_head(
    method: bytes,
    version: str,
    upgrade: bool,
    facts: RequestFacts,
    headers: list[tuple[bytes, bytes]],
    via: bytes,
) -> bool:
    """Raise `Reject` for a head the proxy must not forward; True for a WebSocket handshake.

    `upgrade` is llhttp's verdict (Connection: upgrade with an Upgrade header);
    `via` is this node's name, as it writes it into Via.
    """
    if method == b"CONNECT":
        raise Reject(405, "CONNECT is not supported by this proxy")
    te = facts.transfer_encoding
    if te is not None:
        if version == "1.0":
            raise Reject(400, "Transfer-Encoding in an HTTP/1.0 request")
        if not is_chunked_only(te):
            raise Reject(501, "a request Transfer-Encoding other than chunked is not supported")
    if facts.hosts > 1:
        raise Reject(400, "more than one Host header")
    if facts.hosts == 0 and version == "1.1":
        raise Reject(400, "an HTTP/1.1 request needs a Host header")
    if facts.via is not None and _passed_here(facts.via, via):
        raise Reject(508, "this request looped back to the proxy it passed")
    if not upgrade:
        return False
    has_body = te is not None or bool(facts.content_length)
    if not facts.websocket():
        if has_body:
            raise Reject(501, "an Upgrade other than websocket with a body is not supported")
        return False
    problem = handshake_problem(method, version, headers)
    if problem == VERSION_PROBLEM:
        raise Reject(426, problem, b"Sec-WebSocket-Version: 13\r\n")
    if problem is not None:
        raise Reject(400, problem)
    if has_body:
        raise Reject(400, "a WebSocket handshake has no body")
    return True


def _passed_here(received_via: bytes, via: bytes) -> bool:
    mine = b"1.1 " + via
    return any(
        hop.strip() == mine or hop.strip().startswith(mine + b" ")
        for hop in received_via.split(b",")
    )


class ParsedURL(Protocol):
    """httptools' parsed URL as it is: an absent part is None (its stubs say bytes, which
    the compiled module would check at run time)."""

    host: bytes | None
    port: int | None
    path: bytes | None
    query: bytes | None


def split_target(url: bytes, method: bytes) -> tuple[bytes, bytes, bytes | None]:
    """(target to forward, path to route on, authority of an absolute-form target or None)."""
    if url.startswith(b"/"):
        if b"#" in url:  # a fragment is the client's own business (RFC 9110 §4.2.4)
            url = url.partition(b"#")[0]
        return url, url, None
    if url == b"*" and method == b"OPTIONS":
        return url, b"/", None  # asks about the server as a whole: forwarded as it is
    try:
        parsed = cast(ParsedURL, parse_url(url))
    except HttpParserError:
        raise Reject(400, "bad request target") from None
    path = (parsed.path or b"/") + (b"?" + parsed.query if parsed.query else b"")
    if not parsed.host:
        raise Reject(400, "bad request target")
    host = parsed.host
    if b":" in host:
        host = b"[" + host + b"]"
    authority = host if parsed.port is None else b"%b:%d" % (host, parsed.port)
    if not valid_host(authority):
        raise Reject(400, "bad host in the request target")
    return path, path, authority
