"""A WebSocket client, run inside the client namespace, that sends one frame when told to.

It connects to `ws://HOST:PORT/echo` and records its local port; on SIGUSR1 it
sends one 1,000-byte frame (one segment each way) and records the echo; then it
waits for the connection to end and records how: the close code the server
sent, or the error (a reset: no close frame). One JSON line per event, times in
CLOCK_MONOTONIC:

    {"event": "connected", "at": ..., "port": 41234}
    {"event": "echo", "at": ...}
    {"event": "closed", "at": ..., "code": 1001}   or   {"event": "error", "error": "..."}

    python -m tests.lab.agent.oneframe HOST PORT SECONDS OUTFILE
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import time
from typing import IO, Any

import aiohttp

FRAME = "x" * 1000


def write(out: IO[str], event: str, **fields: Any) -> None:
    out.write(json.dumps({"event": event, "at": time.monotonic(), **fields}) + "\n")
    out.flush()


async def run(url: str, seconds: float, out: IO[str]) -> None:
    told = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, told.set)
    async with aiohttp.ClientSession() as session:
        ws = await session.ws_connect(url, autoping=False)
        sock = ws.get_extra_info("socket")
        write(out, "connected", port=sock.getsockname()[1])
        try:
            async with asyncio.timeout(seconds):
                await told.wait()
                await ws.send_str(FRAME)
                msg = await ws.receive()
                if msg.type == aiohttp.WSMsgType.TEXT:
                    write(out, "echo")
                    msg = await ws.receive()
        except TimeoutError:
            write(out, "error", error="no end in time")
            return
        if msg.type == aiohttp.WSMsgType.CLOSE:
            write(out, "closed", code=msg.data)
        else:
            write(out, "error", error=f"{msg.type.name} {ws.exception()!r}")


if __name__ == "__main__":
    host, port, seconds, path = sys.argv[1:5]
    with open(path, "a") as out:
        asyncio.run(run(f"http://{host}:{port}/echo", float(seconds), out))
