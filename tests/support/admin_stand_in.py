"""A stand-in for the proxy's admin API, for the agent's tests in every tier.

A real aiohttp server on loopback with the endpoints the agent calls
(`/healthz`, `/drain`, `/drain?address=`, `/undrain`) and switches a test flips.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web


class AdminStandIn:
    """A real HTTP server shaped like the proxy's admin API, with a health switch for tests."""

    def __init__(self) -> None:
        self.healthy = True
        self.ready = (1, 2)  # backend pools (and servers) with a server up, in total
        self.draining = False  # a whole-proxy drain
        self.drains = 0
        self.undrains = 0
        # `POST /drain?address=` calls, each with what `on_address_drain` saw at that moment
        self.address_drains: list[tuple[str, Any]] = []
        self.on_address_drain: Callable[[str], Awaitable[Any]] | None = None
        self.port = 0
        self._runner: web.AppRunner | None = None

    async def start(self, host: str = "127.0.0.1") -> str:
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_post("/drain", self._drain)
        app.router.add_post("/undrain", self._undrain)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, 0)
        await site.start()
        self.port = int(self._runner.addresses[0][1])
        return f"http://{host}:{self.port}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _healthz(self, _request: web.Request) -> web.Response:
        body = {"ready": self.ready[0], "pools": self.ready[1], "draining": self.draining}
        body |= {"servers_up": self.ready[0], "servers": self.ready[1]}
        if self.healthy and not self.draining:
            return web.json_response({"status": "ok", **body})
        reasons = ["draining"] if self.draining else ["switched off"]
        return web.json_response({"status": "unhealthy", "reasons": reasons, **body}, status=503)

    async def _undrain(self, _request: web.Request) -> web.Response:
        self.undrains += 1
        self.draining = False
        return web.json_response({"status": "serving"})

    async def _drain(self, request: web.Request) -> web.Response:
        address = request.query.get("address")
        if address is None:
            self.drains += 1
            self.draining = True
            return web.json_response({"draining": True})
        seen = None if self.on_address_drain is None else await self.on_address_drain(address)
        self.address_drains.append((address, seen))
        return web.json_response({"status": "draining address", "websockets": 0}, status=202)
