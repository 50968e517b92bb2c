"""Request heads the proxy refuses before routing, and request targets."""

from __future__ import annotations

import pytest

from haproxy_py.proxy.headers import RequestFacts
from haproxy_py.proxy.requestcheck import Reject, check_head, split_target

KEY = (b"Sec-WebSocket-Key", b"dGhlIHNhbXBsZSBub25jZQ==")
WS = [(b"Host", b"h"), (b"Connection", b"Upgrade"), (b"Upgrade", b"websocket"), KEY]


def check(headers, method=b"GET", version="1.1", upgrade=False) -> bool:
    return check_head(method, version, upgrade, RequestFacts(headers), headers, b"node-a")


def refusal(headers, **kwargs) -> tuple[int, str]:
    with pytest.raises(Reject) as caught:
        check(headers, **kwargs)
    return caught.value.status, caught.value.text


def test_plain_requests_pass() -> None:
    assert check([(b"Host", b"h")]) is False
    assert check([], version="1.0") is False


@pytest.mark.parametrize(
    ("headers", "kwargs", "status"),
    [
        ([], {}, 400),
        ([(b"Host", b"a"), (b"Host", b"b")], {}, 400),
        ([(b"Host", b"a"), (b"Transfer-Encoding", b"gzip, chunked")], {}, 501),
        ([(b"Host", b"a"), (b"Transfer-Encoding", b"chunked")], {"version": "1.0"}, 400),
        ([(b"Host", b"a")], {"method": b"CONNECT"}, 405),
        ([(b"Host", b"a"), (b"Via", b"1.0 x, 1.1 node-a (proxy)")], {}, 508),
    ],
)
def test_refused_heads(headers, kwargs, status) -> None:
    assert refusal(headers, **kwargs)[0] == status


def test_a_via_of_another_node_is_no_loop() -> None:
    assert check([(b"Host", b"a"), (b"Via", b"1.1 node-ab")]) is False


def test_websocket_handshake() -> None:
    assert check([*WS, (b"Sec-WebSocket-Version", b"13")], upgrade=True) is True
    with pytest.raises(Reject) as caught:
        check([*WS, (b"Sec-WebSocket-Version", b"8")], upgrade=True)
    assert caught.value.status == 426
    assert caught.value.extra == b"Sec-WebSocket-Version: 13\r\n"
    body = [*WS, (b"Sec-WebSocket-Version", b"13"), (b"Content-Length", b"3")]
    assert refusal(body, upgrade=True)[0] == 400


def test_other_upgrades_are_plain_requests_unless_they_carry_a_body() -> None:
    h2c = [(b"Host", b"h"), (b"Connection", b"Upgrade"), (b"Upgrade", b"h2c")]
    assert check(h2c, upgrade=True) is False
    assert refusal([*h2c, (b"Content-Length", b"3")], upgrade=True)[0] == 501
    assert refusal([*h2c, (b"Transfer-Encoding", b"chunked")], upgrade=True)[0] == 501


def test_split_target() -> None:
    assert split_target(b"/a?b#frag", b"GET") == (b"/a?b", b"/a?b", None)
    assert split_target(b"*", b"OPTIONS") == (b"*", b"/", None)
    assert split_target(b"http://A.example:8080/x?q", b"GET") == (
        b"/x?q",
        b"/x?q",
        b"A.example:8080",
    )
    assert split_target(b"http://[::1]/", b"GET")[2] == b"[::1]"
    with pytest.raises(Reject):
        split_target(b"*", b"GET")
