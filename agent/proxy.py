"""Talking to the local proxy's admin API: liveness, readiness, and the drain switches."""

from __future__ import annotations

import json
import ssl
from dataclasses import dataclass
from typing import Any

import aiohttp

from haproxy_py.cluster.agent_config import AdminClientTls
from haproxy_py.proxy.addresshold import LIMIT

# the proxy answers /hold within its limit, plus its own load: 2 s more
HOLD_LIMIT = aiohttp.ClientTimeout(total=LIMIT + 2.0)


@dataclass(frozen=True)
class ProxyStatus:
    """One `/healthz` probe.

    `live`: 200 (the proxy answers and its listeners accept). `refused`: the
    admin API refused the connection, so the process is gone (a failure that
    needs no confirmation), as opposed to a slow or hung answer. `ready` of
    `pools` is readiness (backend pools with a server up); `draining` is None
    when the proxy did not say.
    """

    live: bool
    detail: str
    refused: bool = False
    ready: int = 0
    pools: int = 0
    servers_up: int = 0
    servers: int = 0
    draining: bool | None = None


def status_of(code: int, body: Any) -> ProxyStatus:
    """The probe result for a `/healthz` answer (`body` is its parsed JSON, or None)."""
    obj = body if isinstance(body, dict) else {}
    detail = f"/healthz answered {code}"
    reasons = obj.get("reasons")
    if isinstance(reasons, list) and reasons:
        detail += ": " + "; ".join(str(r) for r in reasons)
    draining = obj.get("draining")
    return ProxyStatus(
        live=code == 200,
        detail=detail,
        ready=_count(obj, "ready"),
        pools=_count(obj, "pools"),
        servers_up=_count(obj, "servers_up"),
        servers=_count(obj, "servers"),
        draining=draining if isinstance(draining, bool) else None,
    )


def client_context(tls: AdminClientTls) -> ssl.SSLContext:
    """Verify the proxy's certificate against `cacert`, and show ours (the admin API asks)."""
    context = ssl.create_default_context(cafile=str(tls.cacert))
    context.load_cert_chain(tls.cert, tls.key)
    return context


class ProxyClient:
    """The admin API at `base_url` (e.g. http://127.0.0.1:8081), every call bounded by `timeout`.

    With `tls` (an https URL) every call presents the agent's client certificate; with
    `token`, every change carries it as a bearer token (`[admin] tokens` of the proxy).
    """

    def __init__(
        self,
        base_url: str,
        timeout: float,
        tls: AdminClientTls | None = None,
        token: str | None = None,
    ) -> None:
        self.base_url = base_url
        self._auth = {"Authorization": f"Bearer {token}"} if token else {}
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=timeout),
            connector=aiohttp.TCPConnector(
                limit=8, force_close=False, ssl=True if tls is None else client_context(tls)
            ),
        )

    async def close(self) -> None:
        await self._session.close()

    async def probe(self) -> ProxyStatus:
        """`/healthz`: never raises; a refused connection is told apart from a slow answer."""
        try:
            async with self._session.get(f"{self.base_url}/healthz") as response:
                return status_of(response.status, _json(await response.read()))
        except aiohttp.ClientConnectorError as exc:
            refused = isinstance(exc.os_error, ConnectionRefusedError)
            return ProxyStatus(False, f"/healthz unreachable: {exc.os_error}", refused=refused)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            return ProxyStatus(False, f"/healthz unreachable: {type(exc).__name__} {exc}".strip())

    async def undrain(self) -> str:
        """Bring the proxy out of a whole-proxy drain (POST /undrain); never raises."""
        return await self._post("/undrain", {})

    async def drain_address(self, address: str) -> str:
        """Ask the proxy to close the connections on one local address (1001 for WebSockets,
        a clean close for HTTP keep-alive); returns what happened, never raises."""
        return await self._post("/drain", {"address": address})

    async def hold_address(self, address: str) -> str:
        """Before `address` leaves this node: ask the proxy to send its clients nothing more
        (WebSockets held, keep-alive connections frozen) until they acknowledged everything
        (`POST /hold`); never raises."""
        return await self._post("/hold", {"address": address}, HOLD_LIMIT)

    async def unhold_address(self, address: str) -> str:
        """`address` came back after its hold: its clients are served again at once (`POST
        /unhold`); never raises."""
        return await self._post("/unhold", {"address": address})

    async def _post(
        self, path: str, params: dict[str, str], bound: aiohttp.ClientTimeout | None = None
    ) -> str:
        try:
            url = f"{self.base_url}{path}"
            async with self._session.post(
                url, params=params, headers=self._auth, timeout=bound
            ) as response:
                if response.status == 404:
                    return f"the proxy has no {path}"
                body = _json(await response.read())
                detail = ""
                if isinstance(body, dict) and "websockets" in body:
                    detail = f" ({body['websockets']} WebSockets"
                    if "unacknowledged" in body:
                        detail += f", {body.get('connections', 0)} HTTP connections"
                        detail += f", {body['unacknowledged']} with bytes unacknowledged"
                    detail += ")"
                return f"{path} answered {response.status}{detail}"
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            return f"{path} unreachable: {type(exc).__name__}"


def _count(obj: dict[str, Any], key: str) -> int:
    value = obj.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
