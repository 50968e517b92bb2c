"""Mutated requests (bounded): the backend never parses a request the proxy did not forward.

Hypothesis mutates valid requests with the headers smuggling is made of
(Connection nominations, Transfer-Encoding variants, duplicate or missing
framing and Host, underscores, Upgrade, bare LF, a request hidden in a body,
truncation) and sends one to three of them on a connection. Every request the
proxy forwards is logged with its path, and every path is unique to its case,
so a smuggled request shows up at the backend as a path the proxy never logged (a
`/smuggled/` request after a body the head did not frame is a pipelined request the
proxy forwards, and logs, on its own).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.integration.adversarial.client import config, read_until_closed
from tests.integration.proxy.support import access_lines

NASTY = [
    b"Connection: content-length",
    b"Connection: transfer-encoding",
    b"Connection: keep-alive, Content-Length, Host",
    b"Connection: Transfer-Encoding",
    b"Connection: close",
    b"Connection: Upgrade",
    b"Transfer-Encoding: chunked",
    b"Transfer-Encoding: gzip, chunked",
    b"Transfer-Encoding:  chunked",
    b"Content-Length: 0",
    b"Content-Length: 7",
    b"Content-Length: 64",
    b"Host: other.example",
    b"Upgrade: websocket",
    b"Upgrade: h2c",
    b"Content_Length: 3",
    b"Transfer_Encoding: chunked",
    b"Expect: 100-continue",
    b"Sec-WebSocket-Version: 13",
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
]
CONNECTION = [
    b"",
    b"Connection: content-length",
    b"Connection: keep-alive, Content-Length, Host",
    b"Connection: Transfer-Encoding",
    b"Connection: Upgrade",
]
UPGRADE = [b"", b"", b"Upgrade: h2c", b"Upgrade: websocket"]
MUTATIONS = ["insert", "delete", "duplicate", "upper", "bare-lf", "smuggle", "truncate"]


def base(kind: int, path: bytes, hidden: bytes) -> tuple[list[bytes], bytes]:
    """(head lines without the blank line, body) of a valid request; kinds 3 and 4 carry
    a whole request as their body, the shape a desync turns into a second request."""
    post = b"POST " + path + b" HTTP/1.1"
    if kind == 0:
        return [b"GET " + path + b" HTTP/1.1", b"Host: a"], b""
    body = b"payload" if kind in (1, 2) else hidden
    if kind in (1, 3):
        return [post, b"Host: a", b"Content-Length: %d" % len(body)], body
    return (
        [post, b"Host: a", b"Transfer-Encoding: chunked"],
        b"%x\r\n%b\r\n0\r\n\r\n" % (len(body), body),
    )


@st.composite
def request(draw: st.DrawFn, case: int, k: int) -> bytes:
    hidden = b"GET /smuggled/%d/%d HTTP/1.1\r\nHost: a\r\n\r\n" % (case, k)
    lines, body = base(draw(st.integers(0, 4)), b"/f/%d/%d" % (case, k), hidden)
    # The Connection and Upgrade headers smuggling is made of, drawn on their own so that
    # they meet every body shape often; then general mutations on top.
    for extra in (CONNECTION, UPGRADE):
        line = draw(st.sampled_from(extra))
        if line:
            lines.insert(draw(st.integers(1, len(lines))), line)
    mutations = draw(st.lists(st.sampled_from(MUTATIONS), max_size=3))
    for mutation in mutations:
        at = draw(st.integers(1, len(lines)))
        if mutation == "insert":
            lines.insert(at, draw(st.sampled_from(NASTY)))
        elif mutation == "delete" and len(lines) > 1:
            del lines[max(1, at - 1)]
        elif mutation == "duplicate":
            lines.insert(at, lines[at - 1] if at > 1 else lines[-1])
        elif mutation == "upper":
            lines[at - 1] = lines[at - 1].upper() if at > 1 else lines[at - 1]
        elif mutation == "bare-lf":
            lines[at - 1] += b"\n"
        elif mutation == "smuggle":
            body += hidden  # after the body: a pipelined request, forwarded on its own
    data = b"\r\n".join(lines) + b"\r\n\r\n" + body
    if "truncate" in mutations:
        data = data[: draw(st.integers(1, len(data)))]
    return data


@pytest.mark.single_process
async def test_backend_never_sees_a_request_the_proxy_did_not_forward(recorder, proxy) -> None:
    backend = await recorder()
    timeouts = "[proxy.timeouts]\nclient_header = 1\nclient_body = 1\nupstream_header = 2\n"
    server = await proxy(config(backend.address, proxy=timeouts))
    cases: list[list[bytes]] = []

    @settings(
        max_examples=80,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
        database=None,
    )
    @given(data=st.data())
    def draw_case(data: st.DataObject) -> None:
        case = len(cases)
        n = data.draw(st.integers(1, 3))
        cases.append([data.draw(request(case, k)) for k in range(n)])

    draw_case()  # hypothesis draws the cases; they run below on the proxy's event loop
    assert 0 < len(cases) <= 80
    with access_lines(server) as entries:
        for requests in cases:
            reader, writer = await asyncio.open_connection(*server.address("web"))
            with contextlib.suppress(ConnectionError):
                writer.write(b"".join(requests))
                await writer.drain()
                writer.write_eof()
            async with asyncio.timeout(30):
                await read_until_closed(reader)
            writer.close()
    forwarded = Counter(
        str(e["path"]) for e in entries if e.get("event") == "http" and e.get("server")
    )
    seen = Counter(s.path for s in backend.seen)
    assert not seen - forwarded, (
        f"the backend parsed requests the proxy never forwarded: {seen - forwarded}"
    )
    assert sum(seen.values()) <= sum(forwarded.values())
    assert sum(forwarded.values()) >= len(cases) // 2  # not a test of 400s only
