"""A tiny TCP forwarder from a host loopback port to the lab's VIP (run detached by `lab up`).

The lab lives in namespaces; a browser on the host reaches it through this
process, which listens on 127.0.0.1 only and connects through the lab bridge.
Each client connection gets a fresh upstream connection, so after a failover
a reconnecting page lands on whichever node holds the VIP now.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
from pathlib import Path


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        with contextlib.suppress(ConnectionError, OSError):
            if writer.can_write_eof():
                writer.write_eof()


async def _handle(
    host: str, port: int, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter
) -> None:
    try:
        upstream_r, upstream_w = await asyncio.wait_for(asyncio.open_connection(host, port), 5)
    except (OSError, TimeoutError):
        client_w.close()
        return
    try:
        await asyncio.gather(_pipe(client_r, upstream_w), _pipe(upstream_r, client_w))
    finally:
        for w in (client_w, upstream_w):
            w.close()


async def serve(listen_port: int, host: str, port: int, port_file: Path) -> None:
    async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await _handle(host, port, r, w)

    server = await asyncio.start_server(handle, "127.0.0.1", listen_port)
    bound = server.sockets[0].getsockname()[1]
    await asyncio.to_thread(port_file.write_text, f"{bound}\n")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description="Forward 127.0.0.1:PORT to the lab's VIP.")
    parser.add_argument("--listen-port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--to", required=True, help="VIP:PORT")
    parser.add_argument("--port-file", type=Path, required=True, help="where to write the port")
    args = parser.parse_args()
    host, _, port = args.to.rpartition(":")
    asyncio.run(serve(args.listen_port, host, int(port), args.port_file))


if __name__ == "__main__":
    main()
