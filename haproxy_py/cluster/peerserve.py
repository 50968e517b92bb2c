"""Serving a peer endpoint (`haproxy_py.cluster.peerlink`): an aiohttp app behind mutual TLS,
for the agents' endpoint (`agent.peer`) and the controllers' (`controller.peer`)."""

from __future__ import annotations

import asyncio

from aiohttp import web

from haproxy_py.cluster.peerlink import HANDSHAKE_TIMEOUT, PeerTls, server_context


async def serve(
    app: web.Application, tls: PeerTls, host: str, port: int
) -> tuple[web.AppRunner, asyncio.AbstractServer, int]:
    """Listen; returns the runner and server to close, and the port (useful with port 0)."""
    runner = web.AppRunner(app, access_log=None, keepalive_timeout=15)
    await runner.setup()
    assert runner.server is not None  # set by setup()
    server = await asyncio.get_running_loop().create_server(
        runner.server,
        host,
        port,
        ssl=server_context(tls),
        ssl_handshake_timeout=HANDSHAKE_TIMEOUT,
        reuse_address=True,
    )
    sockets = server.sockets
    return runner, server, int(sockets[0].getsockname()[1]) if sockets else port


async def close(runner: web.AppRunner, server: asyncio.AbstractServer) -> None:
    server.close()
    await runner.cleanup()
