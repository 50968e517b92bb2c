"""Shared pieces of the agent's namespace tests: a stand-in proxy admin API, address sampling,
and polling helpers (poll-until-with-timeout, never fixed sleeps)."""

from __future__ import annotations

import contextlib
import json
import subprocess
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

from aiohttp import web

from haproxy_py.lab.netns import Plumbing, free_subnet

PREFIX = "hv"  # every namespace, bridge and veth of these tests starts with it


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


def addresses(netns: str, dev: str = "eth0") -> dict[str, int | None]:
    """IPv4 addresses on `dev` in `netns` -> remaining valid lifetime (None = forever)."""
    out = subprocess.run(
        ["ip", "-n", netns, "-j", "-4", "addr", "show", "dev", dev],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    found: dict[str, int | None] = {}
    for link in json.loads(out or "[]"):
        for info in link.get("addr_info", []):
            valid = info.get("valid_life_time")
            found[info["local"]] = None if valid in (None, 4294967295) else int(valid)
    return found


@contextlib.contextmanager
def plumbing(tmp_path: Path, prefix: str) -> Iterator[tuple[Plumbing, str]]:
    """A Plumbing under `prefix` on a free /24, torn down whatever happens; yields (it, subnet)."""
    lab = Plumbing(prefix, tmp_path / f"{prefix}-lab.json")
    try:
        yield lab, str(free_subnet(200).network_address).rsplit(".", 1)[0]
    finally:
        lab.teardown()
