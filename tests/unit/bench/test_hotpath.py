"""The hot-path harness drives a real exchange through the proxy's protocol objects."""

from __future__ import annotations

import uvloop

from bench.hotpath import measure


def test_an_exchange_goes_through_and_is_counted() -> None:
    result = uvloop.run(measure(exchanges=20, timed=20))
    assert result.to_client.startswith(b"HTTP/1.1 200 OK\r\n")
    assert result.to_client.endswith(b"Via: 1.1 bench\r\n\r\nHello, world!")
    assert b"\r\nX-Forwarded-For: 127.0.0.1\r\n" in result.to_backend
    functions = dict(result.by_function)
    assert functions["_request_head (frontend.py)"] > 0
    assert "exchange (hotpath.py)" not in functions
    assert result.opcodes > 100 and result.calls > 10 and result.cpu_us > 0
