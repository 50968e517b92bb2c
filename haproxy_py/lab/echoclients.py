"""WebSocket echo clients through a VIP, in three classes, that record how each connection ends.

`idle` clients only wait; `periodic` ones send a frame every 100 ms; `continuous`
ones send, wait for the echo, and send again at once, so a packet of theirs is
in flight at any instant of a move. Every client reconnects at once when its
connection ends and writes one JSON line per event: `connected` (with the node
named by the handshake's `Via`), `echo` (the first echo of a connection, for the
reconnect latency), `closed` (with the close code the server sent) or `error`
(the connection ended without a close frame: a reset, an abnormal closure).
A planned move must give every client `closed` 1001 and no `error`.

    python -m haproxy_py.lab.echoclients URL SECONDS OUT IDLE PERIODIC CONTINUOUS
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import IO

import aiohttp

PERIOD = 0.1  # a periodic client's send interval
RETRY = 0.01  # pause before a reconnect after a failed connect


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
) -> None:
    while time.monotonic() < deadline:
        try:
            ws = await session.ws_connect(url, autoclose=True, autoping=True)
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            record(index, kind, "connect_failed", error=type(exc).__name__)
            await asyncio.sleep(RETRY)
            continue
        via = ws._response.headers.get("Via", "?").split()[-1]  # the 101's Via header
        record(index, kind, "connected", via=via)
        first_echo = asyncio.Event()
        echoed = asyncio.create_task(_note(first_echo, record, index, kind, via))
        error: str | None = None
        try:
            async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                await _converse(ws, kind, first_echo)
        except TimeoutError:
            await ws.close()
            echoed.cancel()
            return
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


async def main(url: str, seconds: float, record: Recorder, kinds: list[str]) -> None:
    deadline = time.monotonic() + seconds
    limits = aiohttp.ClientTimeout(total=None, connect=2.0, sock_connect=2.0)
    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    async with aiohttp.ClientSession(timeout=limits, connector=connector) as session:
        await asyncio.gather(
            *(client(session, url, i, kind, deadline, record) for i, kind in enumerate(kinds))
        )


def read(path: str) -> list[dict[str, object]]:
    """The events written so far."""
    try:
        with open(path) as lines:
            return [json.loads(line) for line in lines if line.endswith("\n")]
    except FileNotFoundError:
        return []


if __name__ == "__main__":
    url, seconds, out, idle, periodic, continuous = sys.argv[1:]
    kinds = ["idle"] * int(idle) + ["periodic"] * int(periodic) + ["continuous"] * int(continuous)
    with open(out, "w") as sink:
        asyncio.run(main(url, float(seconds), Recorder(sink), kinds))
