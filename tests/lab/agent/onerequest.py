"""An HTTP keep-alive client, run inside the client namespace, that sends one request when told.

It connects to `HOST:PORT` and records its local port; on SIGUSR1 it sends
`GET /` (HTTP/1.1, keep-alive) and records the response; then it keeps the
connection unused for a second, as a client's pool does (only its kernel
acknowledges what arrives meanwhile), and records how it ends: a clean close
(the proxy's FIN) or the error (a reset). One JSON line per event, times
in CLOCK_MONOTONIC:

    {"event": "connected", "at": ..., "port": 41234}
    {"event": "response", "at": ..., "status": 200}
    {"event": "closed", "at": ...}   or   {"event": "error", "error": "..."}

    python -m tests.lab.agent.onerequest HOST PORT SECONDS OUTFILE
"""

from __future__ import annotations

import asyncio
import signal
import sys
from typing import IO

from tests.integration.proxy.raw import keep_alive_exchange
from tests.lab.agent.oneframe import write

IDLE = 1.0  # the connection rests this long after its response before it is read again


async def run(host: str, port: int, seconds: float, out: IO[str]) -> None:
    told = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, told.set)
    reader, writer = await asyncio.open_connection(host, port)
    write(out, "connected", port=writer.get_extra_info("sockname")[1])
    try:
        async with asyncio.timeout(seconds):
            await told.wait()
            status = await keep_alive_exchange(reader, writer, "/")
            write(out, "response", status=status)
            await asyncio.sleep(IDLE)  # a pooled connection, unused: its close is not seen yet
            rest = await reader.read()
    except TimeoutError:
        write(out, "error", error="no end in time")
        return
    except (OSError, asyncio.IncompleteReadError) as exc:
        write(out, "error", error=repr(exc))
        return
    if rest:
        write(out, "error", error=f"unexpected bytes {rest[:40]!r}")
    else:
        write(out, "closed")
    writer.close()


if __name__ == "__main__":
    host, port, seconds, path = sys.argv[1:5]
    with open(path, "a") as out:
        asyncio.run(run(host, int(port), float(seconds), out))
