"""A WebSocket client stand-in, run inside the client namespace, that follows a moved VIP.

It connects to `ws://HOST:PORT/echo`, checks one echo and then waits, as a
client waiting for news does; when the proxy closes the session it reconnects
at once (each try bounded by a short timeout, as a browser's reconnecting
client would retry) and stops after the first echo on the new session, or at
SECONDS. One JSON
line per event, times in CLOCK_MONOTONIC (shared with the test):

    {"event": "connected", "at": ..., "via": "n1"}
    {"event": "closed", "at": ..., "code": 1001}
    {"event": "echoed", "at": ..., "via": "n2"}

    python -m tests.lab.agent.wsclient HOST PORT SECONDS OUTFILE
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import IO, Any

import aiohttp

ATTEMPT_TIMEOUT = 0.3


def write(out: IO[str], event: str, **fields: Any) -> None:
    out.write(json.dumps({"event": event, "at": time.monotonic(), **fields}) + "\n")


async def connect(
    session: aiohttp.ClientSession, url: str, deadline: float, vias: list[str]
) -> tuple[aiohttp.ClientWebSocketResponse, str]:
    """The first handshake that succeeds before `deadline`, and the node its Via names."""
    while True:
        try:
            async with asyncio.timeout(ATTEMPT_TIMEOUT):
                ws = await session.ws_connect(url)
            return ws, vias[-1]
        except (aiohttp.ClientError, TimeoutError, OSError):
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.01)


async def follow(url: str, seconds: float, out: IO[str]) -> None:
    deadline = time.monotonic() + seconds
    vias: list[str] = []  # the proxy node named by each handshake's Via header

    async def on_response(
        _session: aiohttp.ClientSession,
        _context: object,
        params: aiohttp.TraceRequestEndParams,
    ) -> None:
        vias.append((params.response.headers.get("Via") or "-").split()[-1])

    trace = aiohttp.TraceConfig()
    trace.on_request_end.append(on_response)
    async with aiohttp.ClientSession(trace_configs=[trace]) as session:
        sessions = 0
        while time.monotonic() < deadline:
            ws, via = await connect(session, url, deadline, vias)
            sessions += 1
            write(out, "connected", via=via)
            await ws.send_str("hello")
            echo = await ws.receive(timeout=max(0.1, deadline - time.monotonic()))
            if echo.type == aiohttp.WSMsgType.TEXT and sessions > 1:
                write(out, "echoed", via=via)
                await ws.close()
                return
            # then idle, as a client waiting for news does, until the proxy ends the session
            while echo.type == aiohttp.WSMsgType.TEXT and time.monotonic() < deadline:
                echo = await ws.receive(timeout=max(0.1, deadline - time.monotonic()))
            write(out, "closed", code=ws.close_code)
            await ws.close()


def main(host: str, port: int, seconds: float, path: str) -> None:
    with open(path, "w", buffering=1) as out:
        asyncio.run(follow(f"http://{host}:{port}/echo", seconds, out))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4])
