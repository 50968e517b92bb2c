"""Talking to the local proxy's admin API: health, load figures, and the drain switch."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import aiohttp


@dataclass(frozen=True)
class ProxyStatus:
    """One probe: `/healthz` said 200 (ok) or not, plus what `/status` reported, if asked."""

    ok: bool
    detail: str
    backends_up: int | None = None
    backends_total: int | None = None
    connections: int | None = None


def figures(obj: Any) -> tuple[int | None, int | None, int | None]:
    """(backend servers up, backend servers in total, client connections) from `/status`.

    `/status` lists `backends.<name>.servers[].state` and `listeners[].connections`.
    """
    if not isinstance(obj, dict):
        return None, None, None
    up = total = None
    backends = obj.get("backends")
    if isinstance(backends, dict):
        states = [
            server.get("state")
            for backend in backends.values()
            if isinstance(backend, dict) and isinstance(backend.get("servers"), list)
            for server in backend["servers"]
            if isinstance(server, dict)
        ]
        up, total = sum(1 for state in states if state == "up"), len(states)
    connections = None
    listeners = obj.get("listeners")
    if isinstance(listeners, list):
        counts = [item.get("connections") for item in listeners if isinstance(item, dict)]
        connections = sum(c for c in counts if isinstance(c, int) and not isinstance(c, bool))
    return up, total, connections


class ProxyClient:
    """The admin API at `base_url` (e.g. http://127.0.0.1:8081), every call bounded by `timeout`."""

    def __init__(self, base_url: str, timeout: float) -> None:
        self.base_url = base_url
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=timeout),
            connector=aiohttp.TCPConnector(limit=2, force_close=False),
        )

    async def close(self) -> None:
        await self._session.close()

    async def probe(self, with_status: bool) -> ProxyStatus:
        """`/healthz` (200 means healthy), and `/status` figures when `with_status`."""
        try:
            async with self._session.get(f"{self.base_url}/healthz") as response:
                body = await response.read()
                ok = response.status == 200
                detail = f"/healthz answered {response.status}"
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            return ProxyStatus(False, f"/healthz unreachable: {type(exc).__name__} {exc}".strip())
        reasons = _json(body)
        if isinstance(reasons, dict) and isinstance(reasons.get("reasons"), list):
            detail += ": " + "; ".join(str(r) for r in reasons["reasons"])
        up = total = conns = None
        if with_status:
            try:
                async with self._session.get(f"{self.base_url}/status") as response:
                    if response.status == 200:
                        up, total, conns = figures(_json(await response.read()))
            except (aiohttp.ClientError, TimeoutError, OSError):
                pass  # health comes from /healthz; the figures are only informative
        return ProxyStatus(ok, detail, up, total, conns)

    async def drain(self) -> str:
        """Ask the proxy to drain (POST /drain); returns what happened, never raises."""
        try:
            async with self._session.post(f"{self.base_url}/drain") as response:
                if response.status == 404:
                    return "the proxy has no /drain"
                return f"/drain answered {response.status}"
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            return f"/drain unreachable: {type(exc).__name__}"


def _json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
