"""WebSocket echo clients through a VIP, in three classes, that record how each connection ends.

`idle` clients only wait; `periodic` ones send a frame every 100 ms; `continuous`
ones send, wait for the echo, and send again at once, so a packet of theirs is
in flight at any instant of a move; `keepalive` ones are HTTP/1.1 clients that
send a GET on one persistent connection every 100 ms. Every client reconnects at
once when its connection ends and writes one JSON line per event: `connected`
(with the node named by the `Via` header, and when the connect started and
when its TCP handshake completed: `started`, `tcp`), `echo` (the first answer of a
connection, for the reconnect latency), `closed` (with the close code the
server sent; `FIN` for an HTTP connection the server closed cleanly) or `error`
(the connection ended without a close frame or FIN: a reset, an abnormal
closure). A planned move must give every client `closed` 1001 (or `FIN`) and
no `error`.

    python -m haproxy_py.lab.echoclients [--sources A,B,...] [--lifetime S] URL SECONDS OUT
        IDLE PERIODIC CONTINUOUS [KEEPALIVE]

With `--sources`, client i connects from address i modulo their number (each
must be an address of the client's host), as clients on that many hosts would.
With `--lifetime S`, a WebSocket client ends each connection itself after a
random time between 0 and 2 S (a close with 1000, event `ended`), as a user
leaving a page would, and connects again.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import random
import sys
import time
from typing import IO, Any
from urllib.parse import urlsplit

import aiohttp

PERIOD = 0.1  # a periodic client's send interval
RETRY = 0.01  # pause before a reconnect after a failed connect
# The connect in progress in this client's task: when it started and when TCP was up.
_PHASES: contextvars.ContextVar[dict[str, float]] = contextvars.ContextVar("phases")


class Recorder:
    def __init__(self, out: IO[str]) -> None:
        self.out = out

    def __call__(self, client: int, kind: str, event: str, **fields: object) -> None:
        line = {"at": time.monotonic(), "client": client, "class": kind, "event": event, **fields}
        self.out.write(json.dumps(line) + "\n")
        self.out.flush()


async def _converse(
    ws: aiohttp.ClientWebSocketResponse, kind: str, first_echo: asyncio.Event
) -> None:
    """Send as the class does until the connection ends."""

    async def sender() -> None:
        while not ws.closed:
            await ws.send_str("x")
            await asyncio.sleep(PERIOD)

    task = asyncio.create_task(sender()) if kind == "periodic" else None
    try:
        if kind == "continuous":
            await ws.send_str("x")
        async for msg in ws:
            if msg.type == aiohttp.WSMsgType.TEXT:
                first_echo.set()
                if kind == "continuous":
                    await ws.send_str("x")
    finally:
        if task is not None:
            task.cancel()


async def _note(
    first_echo: asyncio.Event, record: Recorder, index: int, kind: str, via: str
) -> None:
    await first_echo.wait()
    record(index, kind, "echo", via=via)


async def client(
    session: aiohttp.ClientSession,
    url: str,
    index: int,
    kind: str,
    deadline: float,
    record: Recorder,
    lifetime: float = 0.0,
) -> None:
    draw = random.Random(index)  # the same lifetimes in every run
    while time.monotonic() < deadline:
        phases: dict[str, float] = {"started": time.monotonic()}
        try:
            _PHASES.set(phases)
            ws = await session.ws_connect(url, autoclose=True, autoping=True)
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            record(index, kind, "connect_failed", error=type(exc).__name__)
            await asyncio.sleep(RETRY)
            continue
        via = ws._response.headers.get("Via", "?").split()[-1]  # the 101's Via header
        record(index, kind, "connected", via=via, **phases)
        first_echo = asyncio.Event()
        echoed = asyncio.create_task(_note(first_echo, record, index, kind, via))
        error: str | None = None
        ends = deadline
        if lifetime > 0:
            ends = min(deadline, time.monotonic() + draw.uniform(0, 2 * lifetime))
        try:
            async with asyncio.timeout(max(0.0, ends - time.monotonic())):
                await _converse(ws, kind, first_echo)
        except TimeoutError:
            await ws.close()
            echoed.cancel()
            if ends == deadline:
                return
            record(index, kind, "ended", via=via)
            continue
        except (aiohttp.ClientError, OSError) as exc:
            error = type(exc).__name__
        echoed.cancel()
        failure = ws.exception()
        if error is None and failure is not None:
            error = type(failure).__name__
        code = ws.close_code
        if error is None and code is not None and code != 1006:
            record(index, kind, "closed", code=code, via=via)
        else:
            record(index, kind, "error", code=code, error=error or "no close frame", via=via)


async def keepalive_client(
    host: str, port: int, index: int, deadline: float, record: Recorder, source: str | None
) -> None:
    kind = "keepalive"
    local = None if source is None else (source, 0)
    while time.monotonic() < deadline:
        try:
            connecting = asyncio.open_connection(host, port, local_addr=local)
            reader, writer = await asyncio.wait_for(connecting, 2.0)
        except (OSError, TimeoutError) as exc:
            record(index, kind, "connect_failed", error=type(exc).__name__)
            await asyncio.sleep(RETRY)
            continue
        via = "?"
        answers = 0
        try:
            while time.monotonic() < deadline:
                writer.write(b"GET / HTTP/1.1\r\nHost: lab\r\n\r\n")
                await writer.drain()
                head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").lower()
                fields = dict(line.split(":", 1) for line in head.split("\r\n")[1:] if ":" in line)
                await reader.readexactly(int(fields.get("content-length", "0")))
                via = fields.get("via", "?").split()[-1] if "via" in fields else "?"
                answers += 1
                if answers == 1:
                    record(index, kind, "connected", via=via)
                    record(index, kind, "echo", via=via)
                if "close" in fields.get("connection", ""):
                    raise asyncio.IncompleteReadError(b"", None)  # the server closes next
                await asyncio.sleep(PERIOD)
        except asyncio.IncompleteReadError as exc:
            if exc.partial:
                record(index, kind, "error", error="truncated response", via=via)
            else:
                record(index, kind, "closed", code="FIN", via=via)
        except (OSError, asyncio.LimitOverrunError, ValueError) as exc:
            record(index, kind, "error", error=type(exc).__name__, via=via)
        finally:
            writer.close()


async def _tcp_up(
    session: aiohttp.ClientSession, context: Any, params: aiohttp.TraceConnectionCreateEndParams
) -> None:
    """When the connection's TCP handshake completed (before the WebSocket handshake)."""
    _PHASES.get()["tcp"] = time.monotonic()


async def main(
    url: str,
    seconds: float,
    record: Recorder,
    kinds: list[str],
    sources: list[str | None],
    lifetime: float = 0.0,
) -> None:
    deadline = time.monotonic() + seconds
    limits = aiohttp.ClientTimeout(total=None, connect=2.0, sock_connect=2.0)
    where = urlsplit(url)
    assert where.hostname is not None and where.port is not None
    trace = aiohttp.TraceConfig()
    trace.on_connection_create_end.append(_tcp_up)
    sessions: list[aiohttp.ClientSession] = [
        aiohttp.ClientSession(
            timeout=limits,
            connector=aiohttp.TCPConnector(
                limit=0, force_close=True, local_addr=None if source is None else (source, 0)
            ),
            trace_configs=[trace],
        )
        for source in sources or [None]
    ]
    try:
        await asyncio.gather(
            *(
                keepalive_client(
                    where.hostname,
                    where.port,
                    i,
                    deadline,
                    record,
                    sources[i % len(sources)] if sources else None,
                )
                if kind == "keepalive"
                else client(sessions[i % len(sessions)], url, i, kind, deadline, record, lifetime)
                for i, kind in enumerate(kinds)
            )
        )
    finally:
        for session in sessions:
            await session.close()


def read(path: str) -> list[dict[str, Any]]:
    """The events written so far."""
    try:
        with open(path) as lines:
            return [json.loads(line) for line in lines if line.endswith("\n")]
    except FileNotFoundError:
        return []


if __name__ == "__main__":
    args = sys.argv[1:]
    options: dict[str, str] = {}
    while args[:1] in (["--sources"], ["--lifetime"]):
        options[args[0]], args = args[1], args[2:]
    sources: list[str | None] = [*options["--sources"].split(",")] if "--sources" in options else []
    url, seconds, out, *counts = args
    classes = ("idle", "periodic", "continuous", "keepalive")
    kinds = [kind for kind, count in zip(classes, counts, strict=False) for _ in range(int(count))]
    with open(out, "w") as sink:
        lifetime = float(options.get("--lifetime", 0))
        asyncio.run(main(url, float(seconds), Recorder(sink), kinds, sources, lifetime))
