"""The agent's peer endpoint: HTTPS with mutual TLS (`haproxy_py.cluster.peerlink`).

* `POST /failsafe` (callers `agent-<node>`): a holder's failsafe round (`agent.failsafe`);
  the answer's promise is bound to the core before the answer leaves, so this node adds
  no address once it has promised.
* `POST /alive` (callers `controller-<node>`): the controller's liveness probe; the nonce
  comes back in an answer that only this node's key can serve, which a keepalive of this
  node's lease sent with a stolen key cannot fake.
* `POST /status` (any cluster identity): etcd reachable, failsafe since when, VIPs held;
  `hactl status` asks it when etcd does not answer.

Callers are refused without a certificate from the cluster CA (at the handshake), and
agents with 403 when the certificate's name is not one of the nodes this agent last saw
in etcd. Controllers and operators are not held to that membership: a node's controller
keeps running (and may lead, and probe) while its agent is stopped and its record gone,
and what they may call here only reads. Bodies are limited to `MESSAGE_MAX` bytes.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from aiohttp import web

from agent.failsafe import Ask, BadMessage, Failsafe
from agent.state import AgentCore
from haproxy_py.cluster.peerlink import MESSAGE_MAX, PeerTls, client_identity
from haproxy_py.cluster.peerserve import serve

log = structlog.get_logger(__name__)

NONCE_MAX = 64


def _role(request: web.Request) -> tuple[str, str]:
    """(role, node) from the client certificate's common name, e.g. ("agent", "n1")."""
    name = client_identity(
        request.transport.get_extra_info("peercert") if request.transport else None
    )
    role, _, node = (name or "").partition("-")
    return role, node


class PeerServer:
    """Serves the peer endpoint of node `name` until `close()`."""

    def __init__(
        self,
        name: str,
        tls: PeerTls,
        failsafe: Failsafe,
        core: AgentCore,
        promised: Callable[[float], None],
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.name = name
        self.tls = tls
        self.failsafe = failsafe
        self.core = core
        self.promised = promised  # told when a promise starts to bind (its end, monotonic)
        self.wall = wall
        self.app = web.Application(client_max_size=MESSAGE_MAX)
        self.app.router.add_post("/failsafe", self._guard(("agent",), self._failsafe))
        self.app.router.add_post("/alive", self._guard(("controller",), self._alive))
        self.app.router.add_post(
            "/status", self._guard(("agent", "controller", "operator"), self._status)
        )
        self._runner: web.AppRunner | None = None
        self._server: asyncio.AbstractServer | None = None

    async def start(self, host: str, port: int) -> int:
        """Listen; returns the port (useful with port 0)."""
        self._runner, self._server, bound = await serve(self.app, self.tls, host, port)
        return bound

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        if self._runner is not None:
            await self._runner.cleanup()

    def _guard(
        self, roles: tuple[str, ...], handler: Callable[[web.Request, str], Awaitable[Any]]
    ) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def guarded(request: web.Request) -> web.Response:
            role, node = _role(request)
            members = self.failsafe.members | {self.name}
            if role not in roles or (role == "agent" and node not in members):
                who = f"{role}-{node}" if role else "no identity"
                log.warning("peer call refused", caller=who, path=request.path)
                return _error(403, f"{who} may not call {request.path} here")
            try:
                body = json.loads(await request.read())
                return web.json_response(await handler(body, node))
            except web.HTTPRequestEntityTooLarge:
                return _error(413, f"body larger than {MESSAGE_MAX} bytes")
            except (ValueError, BadMessage) as exc:
                return _error(400, str(exc))

        return guarded

    async def _failsafe(self, body: Any, node: str) -> dict[str, Any]:
        now = time.monotonic()
        answer = self.failsafe.ask(node, Ask.from_dict(body), self.core.holding, now)
        if answer.promise > 0:
            until = self.failsafe.promised_until(now)
            self.core.arm_hold = max(self.core.arm_hold, until)
            self.promised(until)
        return answer.to_dict()

    async def _alive(self, body: Any, node: str) -> dict[str, Any]:
        nonce = body.get("nonce") if isinstance(body, dict) else None
        if not isinstance(nonce, str) or not 0 < len(nonce) <= NONCE_MAX:
            raise BadMessage(f"nonce: expected a string of 1 to {NONCE_MAX} characters")
        return {"nonce": nonce, "node": self.name}

    async def _status(self, body: Any, node: str) -> dict[str, Any]:
        now = time.monotonic()
        since = self.failsafe.since
        return {
            "node": self.name,
            "etcd": self.failsafe.reaches_etcd(now),
            "failsafe_since": None if since is None else round(self.wall() - (now - since), 3),
            "vips": sorted(self.core.held),
        }


def _error(status: int, text: str) -> web.Response:
    return web.json_response({"error": text}, status=status)
