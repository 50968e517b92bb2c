"""The Python work of one HTTP exchange on the proxy's hot path, without sockets.

`python -m bench.hotpath` drives one client connection and one pooled upstream
connection through keep-alive GETs shaped as the bench's load generator and Go
backend send them, with transports that only record what is written: no system
call, so what is measured is the interpreter's share of the per-request cost.
It prints the Python bytecodes and function calls per exchange (counted with a
tracer: the same on a loaded machine, where CPU times are not) and the best
CPU time per exchange, for the same request and response again and again (as
the load generator sends them) and, with `--vary`, for a new target and a new
response head on every exchange (nothing can be taken from the last one). To
measure another checkout's proxy, run the file itself with that checkout first
on the path:
`PYTHONPATH=/path/to/checkout python bench/hotpath.py`. The tracer sees only
interpreted code: the modules compiled by mypyc (`setup.py`, named in the last
line) add CPU time but no bytecodes or calls.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
import tomllib
from collections import Counter
from dataclasses import dataclass
from types import FrameType
from typing import Any, cast

REQUEST = (
    b"GET / HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nUser-Agent: bench-loadgen\r\nAccept: */*\r\n\r\n"
)
RESPONSE = (
    b"HTTP/1.1 200 OK\r\nContent-Length: 13\r\nContent-Type: text/plain\r\n"
    b"Date: Thu, 03 Dec 2026 17:33:19 GMT\r\n\r\nHello, world!"
)
CONFIG = """
[[listeners]]
name = "web"
bind = "127.0.0.1:0"
[[routes]]
path_prefix = "/"
backend = "app"
[backends.app]
servers = ["127.0.0.1:9"]
"""


class Recorder:
    """A transport that keeps the last writes and never blocks."""

    def __init__(self, peer: tuple[str, int]) -> None:
        self.peer = peer
        self.written: list[bytes] = []
        self.closing = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.peer if name in ("peername", "sockname") else default

    def write(self, data: bytes) -> None:
        self.written.append(data)
        del self.written[:-4]

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    abort = close

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...

    def get_write_buffer_size(self) -> int:
        return 0


@dataclass(frozen=True)
class HotPath:
    opcodes: float  # bytecodes run per exchange
    calls: float  # Python function calls per exchange
    cpu_us: float  # best process CPU per exchange (tracer off)
    by_function: list[tuple[str, float]]  # bytecodes per exchange, by function
    to_client: bytes  # the last response head and body the client got
    to_backend: bytes  # the last request head the backend got


async def measure(exchanges: int = 2000, timed: int = 20000, vary: bool = False) -> HotPath:
    from haproxy_py.configfile import Table
    from haproxy_py.proxy.accesslog import AccessLog
    from haproxy_py.proxy.config import parse_proxy
    from haproxy_py.proxy.frontend import ClientConnection
    from haproxy_py.proxy.server import ProxyServer
    from haproxy_py.proxy.upstream import UpstreamConnection

    proxy = ProxyServer(parse_proxy(Table(tomllib.loads(CONFIG), "hotpath.toml", "")), "bench")
    proxy.loop = asyncio.get_running_loop()
    written: list[int] = []
    proxy.access_log = AccessLog(sink=lambda data: written.append(len(data)))
    proxy.access_log.enabled = True  # as deployed, whatever this process's log level
    backend = proxy.runtime.backends["app"]
    server = backend.servers[0]
    upstream = UpstreamConnection(server, backend.forget, proxy.runtime.head_limit)
    to_backend = Recorder(("127.0.0.1", 9))
    upstream.connection_made(cast(asyncio.Transport, to_backend))
    backend.release(server, upstream)
    client = ClientConnection(proxy, proxy.listeners[0])
    to_client = Recorder(("127.0.0.1", 40000))
    client.connection_made(cast(asyncio.Transport, to_client))

    requests, responses = [REQUEST], [RESPONSE]
    if vary:
        requests = [REQUEST.replace(b" / ", b" /%03d " % n) for n in range(1000)]
        responses = [RESPONSE.replace(b"17:33", b"17:%02d" % (n % 60)) for n in range(59)]
    turn = 0

    def exchange() -> None:
        nonlocal turn
        turn += 1
        client.data_received(requests[turn % len(requests)])
        assert client.upstream is not None, to_client.written
        client.upstream.data_received(responses[turn % len(responses)])

    for _ in range(1000):
        exchange()
    counts: Counter[str] = Counter()

    def tracer(frame: FrameType, event: str, arg: object) -> Any:
        frame.f_trace_opcodes = True
        if event == "opcode":
            code = frame.f_code
            counts[f"{code.co_name} ({code.co_filename.rsplit('/', 1)[-1]})"] += 1
        elif event == "call":
            counts["<calls>"] += 1
        return tracer

    sys.settrace(tracer)
    try:
        for _ in range(exchanges):
            exchange()
    finally:
        sys.settrace(None)
    calls = counts.pop("<calls>") - exchanges  # not the harness's own `exchange`
    counts.pop(f"exchange ({__file__.rsplit('/', 1)[-1]})", None)
    best = float("inf")
    for _ in range(5):
        start = time.process_time()
        for _ in range(timed):
            exchange()
        best = min(best, (time.process_time() - start) / timed * 1e6)
    proxy.access_log.flush()
    return HotPath(
        opcodes=sum(counts.values()) / exchanges,
        calls=calls / exchanges,
        cpu_us=best,
        by_function=[(name, n / exchanges) for name, n in counts.most_common()],
        to_client=to_client.written[-1],
        to_backend=to_backend.written[-1],
    )


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.hotpath", description=__doc__)
    parser.add_argument("--top", type=int, default=25, help="functions to list")
    parser.add_argument(
        "--vary", action="store_true", help="a new target and response head every exchange"
    )
    args = parser.parse_args()
    import uvloop

    result = uvloop.run(measure(vary=args.vary))
    from haproxy_py.proxy.compiled import compiled_modules

    for name, n in result.by_function[: args.top]:
        print(f"{n:7.1f}  {name}")
    print(
        f"{result.opcodes:.0f} bytecodes, {result.calls:.1f} Python calls, "
        f"{result.cpu_us:.2f} us CPU (best of 5) per exchange; "
        f"compiled: {', '.join(compiled_modules()) or 'none'}"
    )


if __name__ == "__main__":
    main()
