"""The controller's peer endpoint: `POST /alive` over mutual TLS, for the standbys' probe.

The leader names this endpoint in its `controller/leader` record (`PeerAddress`); the
standbys post a fresh nonce to it (`controller.probes`) and get it back in an answer that
only a server holding this controller's certificate key can serve, which a keepalive of
its election lease sent with a stolen key cannot fake. Only `controller-*` callers with a
certificate from the cluster CA are answered; the call reads nothing and writes nothing.
"""

from __future__ import annotations

import asyncio
import json

import structlog
from aiohttp import web

from haproxy_py.cluster.peerlink import MESSAGE_MAX, PeerTls, client_identity
from haproxy_py.cluster.peerserve import serve

log = structlog.get_logger(__name__)

NONCE_MAX = 64


def app(name: str) -> web.Application:
    """`name`: this controller's certificate name, echoed with the nonce."""

    async def alive(request: web.Request) -> web.Response:
        transport = request.transport
        caller = client_identity(transport.get_extra_info("peercert") if transport else None)
        if not (caller or "").startswith("controller-"):
            log.warning("peer call refused", caller=caller or "no identity", path=request.path)
            return web.json_response({"error": f"{caller} may not call /alive"}, status=403)
        try:
            nonce = json.loads(await request.read()).get("nonce")
        except (ValueError, AttributeError):
            nonce = None
        if not isinstance(nonce, str) or not 0 < len(nonce) <= NONCE_MAX:
            message = f"nonce: expected a string of 1 to {NONCE_MAX} characters"
            return web.json_response({"error": message}, status=400)
        return web.json_response({"nonce": nonce, "controller": name})

    application = web.Application(client_max_size=MESSAGE_MAX)
    application.router.add_post("/alive", alive)
    return application


async def start(
    name: str, tls: PeerTls, host: str, port: int
) -> tuple[web.AppRunner, asyncio.AbstractServer, int]:
    """Serve `/alive` on host:port until `peerserve.close`; returns the bound port too."""
    return await serve(app(name), tls, host, port)
