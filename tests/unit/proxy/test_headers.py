"""Head rewriting: hop-by-hop removal, framing and Host from facts, client-IP headers, Via."""

from __future__ import annotations

from haproxy_py.proxy import headers
from haproxy_py.proxy.headers import (
    RequestFacts,
    ResponseFacts,
    cookie_value,
    host_without_port,
    passes_through,
    request_head,
    response_head,
    valid_host,
)


def lines(head: bytes) -> list[bytes]:
    return head.split(b"\r\n")


def names(head: bytes) -> list[bytes]:
    return [line.split(b":")[0].lower() for line in lines(head)[1:] if line]


def head_for(
    headers: list[tuple[bytes, bytes]],
    *,
    method: bytes = b"GET",
    keep_forwarded_for: bool = False,
    upgrade: bool = False,
    underscores: bool = False,
) -> bytes:
    facts = RequestFacts(headers, underscores=underscores)
    return request_head(
        method,
        b"/",
        facts,
        host=facts.host or b"b:1",
        client_ip="10.0.0.9",
        proto=b"http",
        via=b"node-a",
        keep_forwarded_for=keep_forwarded_for,
        upgrade=upgrade,
    )


class TestRequestHead:
    def test_hop_by_hop_and_connection_named_headers_removed(self) -> None:
        head = head_for(
            [
                (b"Host", b"example.com"),
                (b"Connection", b"keep-alive, X-Secret"),
                (b"Keep-Alive", b"timeout=5"),
                (b"TE", b"trailers"),
                (b"Proxy-Connection", b"keep-alive"),
                (b"X-Secret", b"1"),
                (b"X-Kept", b"2"),
            ]
        )
        assert set(names(head)) == {
            b"host",
            b"x-kept",
            b"x-forwarded-for",
            b"x-real-ip",
            b"x-forwarded-proto",
            b"x-forwarded-host",
            b"via",
        }
        assert lines(head)[0] == b"GET / HTTP/1.1"

    def test_connection_never_nominates_framing_or_host(self) -> None:
        """`Connection: Content-Length, Host, Transfer-Encoding` strips none of them."""
        head = head_for(
            [
                (b"Host", b"a.example"),
                (b"Connection", b"keep-alive, Content-Length, Host, Transfer-Encoding"),
                (b"Content-Length", b"76"),
            ],
            method=b"POST",
        )
        assert b"Content-Length: 76" in lines(head)
        assert b"Host: a.example" in lines(head)
        chunked = head_for(
            [
                (b"Host", b"a"),
                (b"Connection", b"Transfer-Encoding"),
                (b"Transfer-Encoding", b"chunked"),
            ],
            method=b"POST",
        )
        assert lines(chunked).count(b"Transfer-Encoding: chunked") == 1

    def test_framing_written_once_from_facts(self) -> None:
        head = head_for([(b"Host", b"h"), (b"Content-Length", b"007")], method=b"POST")
        assert names(head).count(b"content-length") == 1
        assert b"Content-Length: 7" in lines(head)

    def test_edge_replaces_forwarded_for_and_drops_spoofable_headers(self) -> None:
        head = head_for(
            [
                (b"Host", b"h"),
                (b"X-Forwarded-For", b"6.6.6.6"),
                (b"X-Real-IP", b"7.7.7.7"),
                (b"Forwarded", b"for=8.8.8.8"),
                (b"X-Forwarded_For", b"9.9.9.9"),
            ]
        )
        assert b"X-Forwarded-For: 10.0.0.9" in lines(head)
        assert b"X-Real-IP: 10.0.0.9" in lines(head)
        assert b"forwarded" not in names(head)
        assert b"x-forwarded_for" not in names(head)
        assert b"6.6.6.6" not in head and b"7.7.7.7" not in head

    def test_trusted_proxy_forwarded_for_is_appended(self) -> None:
        head = head_for(
            [(b"Host", b"h"), (b"X-Forwarded-For", b"1.2.3.4")], keep_forwarded_for=True
        )
        assert b"X-Forwarded-For: 1.2.3.4, 10.0.0.9" in lines(head)

    def test_underscore_names_dropped_unless_allowed(self) -> None:
        headers = [(b"Host", b"h"), (b"Content_Length", b"5"), (b"Transfer_Encoding", b"x")]
        assert b"content_length" not in names(head_for(headers))
        assert b"transfer_encoding" not in names(head_for(headers))
        assert b"content_length" in names(head_for(headers, underscores=True))

    def test_via_appended_on_requests(self) -> None:
        assert b"Via: 1.1 node-a" in lines(head_for([(b"Host", b"h")]))
        head = head_for([(b"Host", b"h"), (b"Via", b"1.0 edge")])
        assert b"Via: 1.0 edge, 1.1 node-a" in lines(head)

    def test_upgrade_keeps_websocket_headers(self) -> None:
        head = head_for(
            [
                (b"Host", b"h"),
                (b"Connection", b"Upgrade"),
                (b"Upgrade", b"websocket"),
                (b"Sec-WebSocket-Protocol", b"chat"),
                (b"Sec-WebSocket-Extensions", b"permessage-deflate"),
            ],
            upgrade=True,
        )
        for line in (
            b"Connection: Upgrade",
            b"Upgrade: websocket",
            b"Sec-WebSocket-Protocol: chat",
            b"Sec-WebSocket-Extensions: permessage-deflate",
        ):
            assert line in lines(head)

    def test_every_connection_header_counts(self) -> None:
        head = head_for(
            [
                (b"Connection", b"X-One"),
                (b"X-One", b"1"),
                (b"connection", b"x-two"),
                (b"X-Two", b"2"),
                (b"X-Three", b"3"),
            ]
        )
        assert names(head) == [
            b"host",
            b"x-three",
            b"x-forwarded-for",
            b"x-real-ip",
            b"x-forwarded-proto",
            b"via",
        ]


def test_request_facts_count_hosts_and_find_websocket_token() -> None:
    facts = RequestFacts([(b"Host", b"a"), (b"Host", b"b"), (b"Upgrade", b"h2c, WebSocket/13")])
    assert facts.hosts == 2
    assert facts.websocket()
    assert not RequestFacts([(b"Upgrade", b"notwebsocketreally")]).websocket()


def test_valid_host() -> None:
    for good in (b"a.example", b"a.example:8080", b"[::1]:80", b"127.0.0.1", b"x_y"):
        assert valid_host(good), good
    for bad in (b"a.example/x y", b"a b", b"", b"a@b", b"[::1", b"a:b:c"):
        assert not valid_host(bad), bad


def test_response_head_adds_via_and_drops_hop_by_hop() -> None:
    headers = [
        (b"Connection", b"close, X-Internal"),
        (b"X-Internal", b"1"),
        (b"Content-Length", b"3"),
    ]
    facts = ResponseFacts(headers)
    head = response_head(200, b"OK", facts, via=b"node-a", framing=b"")
    assert lines(head)[0] == b"HTTP/1.1 200 OK"
    assert b"Via: 1.1 node-a" in lines(head)
    assert facts.content_length == b"3"
    assert not any(line.lower().startswith((b"connection", b"x-internal")) for line in lines(head))


def test_response_connection_cannot_hide_content_length() -> None:
    facts = ResponseFacts([(b"Connection", b"Content-Length"), (b"Content-Length", b"5")])
    assert facts.content_length == b"5" and facts.delimited


def test_response_transfer_codings() -> None:
    gz = ResponseFacts([(b"Transfer-Encoding", b"gzip, chunked")])
    assert gz.chunked and gz.codings == b"gzip" and gz.delimited
    close = ResponseFacts([(b"Transfer-Encoding", b"gzip")])
    assert not close.chunked and close.codings == b"gzip" and not close.delimited


def test_response_head_keeps_order_and_case_and_frames() -> None:
    headers = [
        (b"X-B", b"2"),
        (b"Transfer-Encoding", b"chunked"),
        (b"x-a", b"1"),
        (b"Keep-Alive", b"timeout=5"),
    ]
    head = response_head(
        404, b"", ResponseFacts(headers), via=b"n", framing=b"Transfer-Encoding: chunked\r\n"
    )
    assert lines(head) == [
        b"HTTP/1.1 404 Not Found",
        b"X-B: 2",
        b"x-a: 1",
        b"Via: 1.1 n",
        b"Transfer-Encoding: chunked",
        b"",
        b"",
    ]


def test_host_without_port() -> None:
    assert host_without_port(b"Example.COM:8080") == "example.com"
    assert host_without_port(b"[::1]:80") == "[::1]"


def test_cookie_value() -> None:
    assert cookie_value([b"a=1; session=abc; b=2"], b"session") == b"abc"
    assert cookie_value([b"a=1", b"session=x"], b"session") == b"x"
    assert cookie_value([b"a=1"], b"session") is None


def test_a_head_passes_through_only_with_its_one_content_length_or_no_body() -> None:
    """Each answer twice: the second comes from the heads remembered, and must not differ."""
    ok = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\n"
    bare = b"HTTP/1.1 204 No Content\r\nServer: x\r\n\r\n"
    for _ in range(2):
        assert passes_through(ok, False) and passes_through(ok, True)
        assert passes_through(bare, True) and not passes_through(bare, False)
        for line in (
            b"content-length: 5",
            b"Transfer-Encoding: chunked",
            b"CONNECTION: close",
            b"Keep-Alive: timeout=5",
            b"Upgrade: h2c",
            b"TE: trailers",
            b"Proxy-Connection: keep-alive",
        ):
            assert not passes_through(ok[:-2] + line + b"\r\n\r\n", False)
        assert not passes_through(b"HTTP/1.0 200 OK\r\nContent-Length: 5\r\n\r\n", False)


def test_the_heads_remembered_are_bounded_in_number_and_size() -> None:
    filler = b"X-Filler: " + b"a" * headers._SEEN_SIZE + b"\r\n"
    long_head = b"HTTP/1.1 200 OK\r\n" + filler + b"Transfer-Encoding: chunked\r\n\r\n"
    assert not passes_through(long_head, False)
    assert long_head not in headers._SEEN
    for n in range(2 * headers._SEEN_MAX):
        head = b"HTTP/1.1 200 OK\r\nX-N: %d\r\nContent-Length: 1\r\n\r\n" % n
        assert passes_through(head, False)
        assert len(headers._SEEN) <= headers._SEEN_MAX
