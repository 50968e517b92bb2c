"""The hot-path harness drives a real exchange through the proxy's protocol objects."""

from __future__ import annotations

import pytest
import uvloop

from bench.hotpath import measure
from haproxy_py.proxy.compiled import compiled_modules


@pytest.mark.parametrize("vary", [False, True])
def test_an_exchange_goes_through_and_is_counted(vary: bool) -> None:
    """The same request again is replayed (its parse skipped); a new target is parsed. The
    tracer sees only interpreted code: a compiled module's functions are not counted."""
    result = uvloop.run(measure(exchanges=20, timed=20, vary=vary))
    assert result.to_client.startswith(b"HTTP/1.1 200 OK\r\n")
    assert result.to_client.endswith(b"Via: 1.1 bench\r\n\r\nHello, world!")
    assert b"\r\nX-Forwarded-For: 127.0.0.1\r\n" in result.to_backend
    target = result.to_backend.split(b" ", 2)[1]
    assert (target != b"/") == vary and target[1:].isdigit() == vary
    functions = dict(result.by_function)
    compiled = compiled_modules()
    assert not [name for name in functions if name.split("(")[1].removesuffix(".py)") in compiled]
    if "frontend" not in compiled:
        parsed = "_request_head (frontend.py)" in functions
        assert parsed == vary and ("_repeat (requestparse.py)" in functions) != vary
        assert result.opcodes > 100 and result.calls > 10
    else:  # the whole exchange runs compiled: only the harness's recording transport is seen
        assert set(functions) == {"write (hotpath.py)", "is_closing (hotpath.py)"}
    assert "exchange (hotpath.py)" not in functions
    assert result.opcodes > 0 and result.calls > 0 and result.cpu_us > 0
