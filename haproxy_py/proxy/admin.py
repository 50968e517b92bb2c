"""The admin API on its own listener (aiohttp.web): /healthz, /status, /metrics and a status page.

It listens on loopback, or anywhere with TLS that requires a client
certificate signed by `client_ca` (`[admin] tls = { cert, key, client_ca }`),
since whoever reaches it can drain the node.

`/healthz` is liveness, what the node agent probes: 200 while the process
answers and its listeners accept (not draining), else 503 with the reasons in
JSON. Its body also carries readiness, a score: how many backend pools have a
server up (`ready` of `pools`). A backend outage is not a liveness failure: every
node shares it, moving the VIP cannot help, and the proxy's own 503 is the
better answer for clients. `/readyz` is 200 only when every pool has a server
up, for load balancers that want the strict view. `POST /drain` puts the node
into draining (as SIGTERM does, without exiting) and `POST /undrain` returns
it to service.
`POST /drain?address=VIP` drains only the connections that came in on that
local address (the node agent asks for it once the VIP has left this node):
the node stays healthy and keeps serving its other addresses. `POST
/hold?address=VIP` comes before it, before the VIP leaves: nothing more is
sent to that address's clients (WebSockets held, keep-alive connections and new
ones read no next request) until they acknowledged everything (`addresshold`),
so that the 1001 or FIN can leave later whatever the timing. `POST
/unhold?address=VIP` ends a hold that no drain follows (the VIP stayed).

The POSTs change the node, so a browser must not be able to send them for
a web page (cross-site request forgery, or DNS rebinding onto the loopback
port): they are refused (403) unless the Host header names this listener
(its address, or localhost on loopback) and any Origin is this listener too.
Programs (the agent, curl) send no Origin and are unaffected. Who may change
the node beyond that (tokens, certificate names, revoked certificates) is
`adminauth`'s decision; every change is logged with who made it.
"""

from __future__ import annotations

import dataclasses
import html
import ipaddress
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

import structlog
from aiohttp import web

from haproxy_py import __version__
from haproxy_py.metrics import CONTENT_TYPE
from haproxy_py.proxy import adminauth
from haproxy_py.proxy.report import STATUS_CLASSES, TrafficReport
from haproxy_py.proxy.stats import build_registry
from haproxy_py.proxy.tls import admin_server_context

if TYPE_CHECKING:
    from haproxy_py.proxy.addresshold import AddressHold
    from haproxy_py.proxy.listeners import AddressDrain, IPAddress
    from haproxy_py.proxy.runtime import Runtime

# A listener as the admin API shows it: name, the address bound (None before), accepting.
ListenerState = tuple[str, tuple[str, int] | None, bool]


class AdminSource(Protocol):
    """What the admin API reads and asks of the proxy: `server.ProxyServer` in one
    process, `master.Master` in front of worker processes."""

    draining: bool
    started_at: float
    runtime: Runtime  # config, backends with their health and shared load

    def listener_states(self) -> list[ListenerState]: ...

    async def traffic(self) -> TrafficReport:
        """The node's counters and gauges (summed over the workers)."""

    def start_drain(self) -> None: ...

    async def address_drain(self, address: IPAddress) -> AddressDrain: ...

    async def address_hold(self, address: IPAddress) -> AddressHold: ...

    async def address_unhold(self, address: IPAddress) -> None: ...

    async def undrain(self) -> None: ...


log = structlog.get_logger(__name__)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


LOOPBACK_NAMES = ("localhost",)
WILDCARDS = ("0.0.0.0", "::", "")


def allowed_hosts(host: str, port: int) -> frozenset[str] | None:
    """The Host values that name an admin listener on host:port; None for a wildcard bind
    (any name may reach it; client-certificate TLS is required there instead)."""
    if host in WILDCARDS:
        return None
    names = {f"[{host}]" if ":" in host else host}
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host in LOOPBACK_NAMES
    if loopback:
        names.update(LOOPBACK_NAMES)
    return frozenset(f"{name}:{port}".lower() for name in names)


def refusal(method: str, headers: Mapping[str, str], hosts: frozenset[str] | None) -> str | None:
    """Why a request must be refused (None: serve it). Only changes are checked."""
    if method in ("GET", "HEAD", "OPTIONS"):
        return None
    host = headers.get("Host", "").lower()
    if hosts is not None and host not in hosts:
        return f"Host {host!r} is not this admin listener ({', '.join(sorted(hosts))})"
    if headers.get("Sec-Fetch-Site", "").lower() == "cross-site":
        return "a cross-site browser request"
    origin = headers.get("Origin")
    if origin is not None:
        _, _, rest = origin.partition("://")
        if rest.lower() != host or not host:
            return f"Origin {origin!r} is not this admin listener"
    return None


class AdminServer:
    def __init__(self, proxy: AdminSource) -> None:
        self.proxy = proxy
        self._traffic = TrafficReport()  # fetched for the scrape being rendered
        self.registry = build_registry(lambda: proxy.runtime, lambda: self._traffic)
        self.app = web.Application(middlewares=[self._same_site_only])
        self.refused = 0  # changes refused by the same-site check
        self.app.router.add_get("/healthz", self.healthz)
        self.app.router.add_get("/readyz", self.readyz)
        self.app.router.add_get("/status", self.status)
        self.app.router.add_get("/metrics", self.metrics)
        self.app.router.add_get("/", self.page)
        self.app.router.add_post("/drain", self.drain)
        self.app.router.add_post("/undrain", self.undrain)
        self.app.router.add_post("/hold", self.hold)
        self.app.router.add_post("/unhold", self.unhold)
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None

    async def start(self) -> None:
        admin = self.proxy.runtime.config.admin
        self._runner = web.AppRunner(self.app, access_log=None, handle_signals=False)
        await self._runner.setup()
        self._site = web.TCPSite(
            self._runner,
            admin.host,
            admin.port,
            reuse_address=True,
            ssl_context=None if admin.tls is None else admin_server_context(admin.tls),
        )
        await self._site.start()

    @web.middleware
    async def _same_site_only(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        config = self.proxy.runtime.config.admin
        port = self.address[1] if self._runner is not None else config.port
        reason = refusal(request.method, request.headers, allowed_hosts(config.host, port))
        if reason is not None:
            self.refused += 1
            log.warning(
                "admin request refused", method=request.method, path=request.path, reason=reason
            )
            return web.json_response({"status": "refused", "reason": reason}, status=403)
        transport = request.transport
        peer = adminauth.peer_of(transport.get_extra_info("peercert") if transport else None)
        authorization = request.headers.get("Authorization")
        who, reason = adminauth.decide(config.auth, request.method, authorization, peer)
        if reason is not None:
            self.refused += 1
            log.warning(
                "admin request refused",
                method=request.method,
                path=request.path,
                reason=reason,
                by=who,
            )
            headers = {"WWW-Authenticate": "Bearer"} if config.auth.tokens else None
            return web.json_response(
                {"status": "refused", "reason": reason}, status=403, headers=headers
            )
        if request.method not in adminauth.CHANGES_FREE:
            log.info(
                "admin change", method=request.method, path=request.path_qs, by=who or "anonymous"
            )
        return await handler(request)

    @property
    def address(self) -> tuple[str, int]:
        assert self._runner is not None
        host, port = self._runner.addresses[0][:2]
        return host, port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def liveness(self) -> list[str]:
        """Why the proxy cannot take traffic on its listeners (empty: it can)."""
        if self.proxy.draining:
            return ["draining"]
        return [
            f"listener {name}: not accepting"
            for name, _, accepting in self.proxy.listener_states()
            if not accepting
        ]

    def readiness(self) -> tuple[int, int, list[str]]:
        """(pools with a server up, pools, the pools without one)."""
        backends = list(self.proxy.runtime.backends.values())
        down = [b.name for b in backends if not any(s.up for s in b.servers)]
        return len(backends) - len(down), len(backends), down

    def health(self) -> tuple[bool, list[str]]:
        """Live and every pool ready, with the reasons when not (for /status and /readyz)."""
        _, _, down = self.readiness()
        reasons = self.liveness() + [f"backend {name}: no server up" for name in down]
        return not reasons, reasons

    async def healthz(self, request: web.Request) -> web.Response:
        reasons = self.liveness()
        ready, pools, _ = self.readiness()
        servers = [s for b in self.proxy.runtime.backends.values() for s in b.servers]
        body: dict[str, Any] = {
            "ready": ready,
            "pools": pools,
            "servers_up": sum(1 for s in servers if s.up),
            "servers": len(servers),
            "draining": self.proxy.draining,
        }
        if not reasons:
            return web.json_response({"status": "ok", **body})
        return web.json_response({"status": "unhealthy", "reasons": reasons, **body}, status=503)

    async def readyz(self, request: web.Request) -> web.Response:
        ok, reasons = self.health()
        if ok:
            return web.json_response({"status": "ok"})
        return web.json_response({"status": "not ready", "reasons": reasons}, status=503)

    def snapshot(self, traffic: TrafficReport) -> dict[str, Any]:
        proxy = self.proxy
        runtime = proxy.runtime
        ok, reasons = self.health()
        return {
            "node": runtime.node_name,
            "version": __version__,
            "healthy": ok,
            "reasons": reasons,
            "draining": proxy.draining,
            "uptime_seconds": round(time.time() - proxy.started_at, 1),
            "config_generation": runtime.generation,
            "listeners": [
                {
                    "name": name,
                    "bind": None if bound is None else "{}:{}".format(*bound),
                    "connections": traffic.listener(name),
                }
                for name, bound, _ in proxy.listener_states()
            ],
            "workers": traffic.processes,
            "websockets": {"open": traffic.websockets_open, "total": traffic.websockets_total},
            "responses": dict(zip(STATUS_CLASSES, traffic.responses, strict=True)),
            "backends": {
                backend.name: {
                    "balance": backend.config.balance,
                    "servers": [
                        {
                            "address": t.server.address,
                            "state": "up" if t.server.up else "down",
                            "active": t.server.load(),
                            "total": traffic.server_total(backend.name, t.server.address),
                            "weight": t.server.weight,
                            "max_conns": t.server.max_conns,
                            "last_error": t.last_error or None,
                            "check_latency_ms": None
                            if t.latency is None
                            else round(t.latency * 1000, 2),
                        }
                        for t in backend.trackers
                    ],
                }
                for backend in runtime.backends.values()
            },
        }

    async def drain(self, request: web.Request) -> web.Response:
        raw = request.query.get("address")
        if raw is None:
            self.proxy.start_drain()
            return web.json_response({"status": "draining"}, status=202)
        address = _address(raw)
        if address is None:
            return _bad_address(raw)
        started = await self.proxy.address_drain(address)
        return web.json_response(
            {
                "status": "draining address",
                "address": str(address),
                "websockets": started.websockets,
                "connections": started.connections,
                "can_send": started.can_send,
            },
            status=202,
        )

    async def hold(self, request: web.Request) -> web.Response:
        """`POST /hold?address=VIP`: before the VIP leaves, stop sending to its clients until
        they acknowledged everything (`addresshold`); answers when they did."""
        raw = request.query.get("address", "")
        address = _address(raw)
        if address is None:
            return _bad_address(raw)
        held = await self.proxy.address_hold(address)
        body = {"status": "held", "address": str(address), **dataclasses.asdict(held)}
        return web.json_response(body)

    async def unhold(self, request: web.Request) -> web.Response:
        """`POST /unhold?address=VIP`: the VIP stayed (or came back) after its hold: its
        clients are served again at once."""
        raw = request.query.get("address", "")
        address = _address(raw)
        if address is None:
            return _bad_address(raw)
        await self.proxy.address_unhold(address)
        return web.json_response({"status": "serving", "address": str(address)})

    async def undrain(self, request: web.Request) -> web.Response:
        try:
            await self.proxy.undrain()
        except OSError as exc:
            reason = f"cannot listen again: {exc.strerror or exc}"
            return web.json_response({"status": "draining", "reason": reason}, status=500)
        return web.json_response({"status": "serving"})

    async def status(self, request: web.Request) -> web.Response:
        return web.json_response(self.snapshot(await self.proxy.traffic()))

    async def metrics(self, request: web.Request) -> web.Response:
        self._traffic = await self.proxy.traffic()
        return web.Response(
            body=self.registry.render().encode(), headers={"Content-Type": CONTENT_TYPE}
        )

    async def page(self, request: web.Request) -> web.Response:
        snap = self.snapshot(await self.proxy.traffic())
        return web.Response(text=render_page(snap), content_type="text/html")


def render_page(snap: dict[str, Any]) -> str:
    """A small self-contained HTML status page (no scripts, no external assets)."""
    e = html.escape
    rows = []
    for name, backend in snap["backends"].items():
        for s in backend["servers"]:
            color = "#2a2" if s["state"] == "up" else "#c22"
            rows.append(
                f"<tr><td>{e(name)}</td><td>{e(s['address'])}</td>"
                f'<td style="color:{color}">{s["state"]}</td><td>{s["active"]}</td>'
                f"<td>{s['total']}</td><td>{e(s['last_error'] or '')}</td></tr>"
            )
    listeners = "".join(
        f"<li>{e(lst['name'])}: {e(str(lst['bind']))} ({lst['connections']} connections)</li>"
        for lst in snap["listeners"]
    )
    state = "healthy" if snap["healthy"] else "unhealthy: " + "; ".join(snap["reasons"])
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>haproxy-py {e(snap["node"])}</title>
<meta http-equiv="refresh" content="5">
<style>body{{font-family:sans-serif;margin:2em}}td,th{{padding:.2em .8em;text-align:left}}
table{{border-collapse:collapse}}tr:nth-child(even){{background:#f3f3f3}}</style></head>
<body><h1>haproxy-py on {e(snap["node"])}</h1>
<p>{e(state)} &middot; up {snap["uptime_seconds"]} s &middot; config generation
{snap["config_generation"]} &middot; WebSockets open {snap["websockets"]["open"]}
(total {snap["websockets"]["total"]})</p>
<h2>Listeners</h2><ul>{listeners}</ul>
<h2>Backends</h2>
<table><tr><th>backend</th><th>server</th><th>state</th><th>active</th><th>total</th>
<th>last error</th></tr>{"".join(rows)}</table>
</body></html>
"""


def _address(raw: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(raw)
    except ValueError:
        return None


def _bad_address(raw: str) -> web.Response:
    reason = f"address: expected an IP address such as 198.18.0.100, got {raw!r}"
    return web.json_response({"status": "refused", "reason": reason}, status=400)
