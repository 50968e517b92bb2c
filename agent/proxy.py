"""Talking to the local proxy's admin API: health, load figures, and the drain switch."""

from __future__ import annotations

import json
import ssl
from dataclasses import dataclass
from typing import Any

import aiohttp

from haproxy_py.cluster.agent_config import AdminClientTls


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


def client_context(tls: AdminClientTls) -> ssl.SSLContext:
    """Verify the proxy's certificate against `cacert`, and show ours (the admin API asks)."""
    context = ssl.create_default_context(cafile=str(tls.cacert))
    context.load_cert_chain(tls.cert, tls.key)
    return context


class ProxyClient:
    """The admin API at `base_url` (e.g. http://127.0.0.1:8081), every call bounded by `timeout`.

    With `tls` (an https URL) every call presents the agent's client certificate.
    """

    def __init__(self, base_url: str, timeout: float, tls: AdminClientTls | None = None) -> None:
        self.base_url = base_url
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=timeout),
            connector=aiohttp.TCPConnector(
                limit=2, force_close=False, ssl=True if tls is None else client_context(tls)
            ),
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
        return await self._post_drain({})

    async def drain_address(self, address: str) -> str:
        """Ask the proxy to close the WebSockets on one local address with 1001 (never raises)."""
        return await self._post_drain({"address": address})

    async def _post_drain(self, params: dict[str, str]) -> str:
        try:
            async with self._session.post(f"{self.base_url}/drain", params=params) as response:
                if response.status == 404:
                    return "the proxy has no /drain"
                body = _json(await response.read())
                detail = ""
                if isinstance(body, dict) and "websockets" in body:
                    detail = f" ({body['websockets']} WebSockets)"
                return f"/drain answered {response.status}{detail}"
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            return f"/drain unreachable: {type(exc).__name__}"


def _json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
