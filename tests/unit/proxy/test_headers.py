"""Head rewriting: hop-by-hop removal, forwarded headers, Via, cookies."""

from __future__ import annotations

from haproxy_py.proxy.headers import (
    RequestFacts,
    ResponseFacts,
    cookie_value,
    host_without_port,
    request_head,
    response_head,
)


def lines(head: bytes) -> list[bytes]:
    return head.split(b"\r\n")


class TestRequestHead:
    def test_hop_by_hop_and_connection_named_headers_removed(self) -> None:
        headers = [
            (b"Host", b"example.com"),
            (b"Connection", b"keep-alive, X-Secret"),
            (b"Keep-Alive", b"timeout=5"),
            (b"TE", b"trailers"),
            (b"Proxy-Connection", b"keep-alive"),
            (b"X-Secret", b"1"),
            (b"X-Kept", b"2"),
        ]
        head = request_head(
            b"GET",
            b"/",
            RequestFacts(headers),
            client_ip="10.0.0.9",
            proto=b"http",
            default_host=b"b:1",
            upgrade=False,
        )
        names = {line.split(b":")[0].lower() for line in lines(head)[1:] if line}
        assert names == {
            b"host",
            b"x-kept",
            b"x-forwarded-for",
            b"x-forwarded-proto",
            b"x-forwarded-host",
        }
        assert lines(head)[0] == b"GET / HTTP/1.1"

    def test_forwarded_for_appends_and_host_kept(self) -> None:
        headers = [(b"Host", b"example.com:8080"), (b"X-Forwarded-For", b"1.2.3.4")]
        head = request_head(
            b"GET",
            b"/x",
            RequestFacts(headers),
            client_ip="10.0.0.9",
            proto=b"http",
            default_host=b"b:1",
            upgrade=False,
        )
        assert b"X-Forwarded-For: 1.2.3.4, 10.0.0.9" in lines(head)
        assert b"X-Forwarded-Host: example.com:8080" in lines(head)
        assert b"Host: example.com:8080" in lines(head)

    def test_chunked_body_reframed(self) -> None:
        headers = [(b"Host", b"h"), (b"Transfer-Encoding", b"chunked")]
        head = request_head(
            b"POST",
            b"/",
            RequestFacts(headers),
            client_ip="1.1.1.1",
            proto=b"http",
            default_host=b"b:1",
            upgrade=False,
        )
        assert lines(head).count(b"Transfer-Encoding: chunked") == 1

    def test_upgrade_keeps_websocket_headers(self) -> None:
        headers = [
            (b"Host", b"h"),
            (b"Connection", b"Upgrade"),
            (b"Upgrade", b"websocket"),
            (b"Sec-WebSocket-Protocol", b"chat"),
            (b"Sec-WebSocket-Extensions", b"permessage-deflate"),
        ]
        head = request_head(
            b"GET",
            b"/ws",
            RequestFacts(headers),
            client_ip="1.1.1.1",
            proto=b"http",
            default_host=b"b:1",
            upgrade=True,
        )
        for line in (
            b"Connection: Upgrade",
            b"Upgrade: websocket",
            b"Sec-WebSocket-Protocol: chat",
            b"Sec-WebSocket-Extensions: permessage-deflate",
        ):
            assert line in lines(head)

    def test_missing_host_gets_server_address(self) -> None:
        head = request_head(
            b"GET",
            b"/",
            RequestFacts([]),
            client_ip="1.1.1.1",
            proto=b"http",
            default_host=b"10.1.1.1:80",
            upgrade=False,
        )
        assert b"Host: 10.1.1.1:80" in lines(head)


def test_response_head_adds_via_and_drops_hop_by_hop() -> None:
    headers = [
        (b"Connection", b"close, X-Internal"),
        (b"X-Internal", b"1"),
        (b"Content-Length", b"3"),
    ]
    head = response_head(200, b"OK", ResponseFacts(headers), via=b"node-a", framing=b"")
    assert lines(head)[0] == b"HTTP/1.1 200 OK"
    assert b"Via: 1.1 node-a" in lines(head)
    assert b"Content-Length: 3" in lines(head)
    assert not any(line.lower().startswith((b"connection", b"x-internal")) for line in lines(head))


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


def test_every_connection_header_counts() -> None:
    headers = [
        (b"Connection", b"X-One"),
        (b"X-One", b"1"),
        (b"connection", b"x-two"),
        (b"X-Two", b"2"),
        (b"X-Three", b"3"),
    ]
    head = request_head(
        b"GET",
        b"/",
        RequestFacts(headers),
        client_ip="1.1.1.1",
        proto=b"http",
        default_host=b"b:1",
        upgrade=False,
    )
    names = [line.split(b":")[0] for line in lines(head)[1:] if line]
    assert names == [b"X-Three", b"Host", b"X-Forwarded-For", b"X-Forwarded-Proto"]


def test_host_without_port() -> None:
    assert host_without_port(b"Example.COM:8080") == "example.com"
    assert host_without_port(b"[::1]:80") == "[::1]"


def test_cookie_value() -> None:
    assert cookie_value([b"a=1; session=abc; b=2"], b"session") == b"abc"
    assert cookie_value([b"a=1", b"session=x"], b"session") == b"x"
    assert cookie_value([b"a=1"], b"session") is None
