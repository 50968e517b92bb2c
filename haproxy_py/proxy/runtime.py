"""Everything the proxy derives from one config: router, backends, balancers, health, pools.

Client connections read `ProxyServer.runtime` when a request starts, so a
reload can build a new `Runtime` and swap it in: new requests use the new one,
requests in flight finish on the old one. A server that keeps its backend and
address keeps its `Server` object across the reload, so its up/down state and
its count of open requests and WebSockets (what `least_conn` and `max_conns`
read) stay true.
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import structlog

from haproxy_py.proxy.balancer import LeastConn, Server, make_balancer
from haproxy_py.proxy.config import BackendConfig, ProxyConfig, ServerConfig
from haproxy_py.proxy.headers import Headers, RequestFacts, cookie_value, response_tails
from haproxy_py.proxy.health import Checker, Tracker
from haproxy_py.proxy.routing import Router
from haproxy_py.proxy.tls import client_context

if TYPE_CHECKING:
    from haproxy_py.proxy.upstream import UpstreamConnection

log = structlog.get_logger(__name__)


def _servers_of(runtime: Runtime | None, backend: str) -> dict[str, Server] | None:
    if runtime is None or backend not in runtime.backends:
        return None
    return {s.address: s for s in runtime.backends[backend].servers}


MAX_IDLE_PER_SERVER = 128

# (backend, server address, ok, error): a passive health result for the master to judge.
PassiveSink = Callable[[str, str, bool, str], None]


class Backend:
    """A pool of servers with its balancer, health trackers and idle upstream connections.

    `reuse` are the servers of the previous generation of this backend, by address.
    """

    def __init__(
        self,
        config: BackendConfig,
        idle_timeout: float = 4.0,
        reuse: dict[str, Server] | None = None,
        passive: PassiveSink | None = None,
    ) -> None:
        self.name = config.name
        self.passive = passive  # a worker's: results go to the master, whose checks judge
        self.on_health: Callable[[str, str, bool], None] | None = None  # the master's push
        self.config = config
        self.idle_timeout = idle_timeout
        self.servers = [_server(s, reuse or {}) for s in config.servers]
        self.balancer: LeastConn = make_balancer(config.balance, self.servers)
        self.trackers = [Tracker(s, config.health) for s in self.servers]
        self.tracker_of = {t.server: t for t in self.trackers}
        self.idle: dict[Server, list[UpstreamConnection]] = {s: [] for s in self.servers}
        self.retired = False  # replaced by a reload: exchanges finishing here keep no connection
        # A connection that began with a PROXY header speaks for one client: never shared.
        self.shared_pool = config.send_proxy is None
        self.ssl: ssl.SSLContext | None = None if config.tls is None else client_context(config.tls)
        tls = None if self.ssl is None or config.tls is None else (self.ssl, config.tls.server_name)
        self.checker = Checker(
            self.name, self.trackers, config.health, self._health_changed, tls, config.send_proxy
        )
        self.hashed = config.balance in ("source_hash", "header_hash")  # requests carry a key
        self._hash_header = None if config.hash_key is None else config.hash_key.name.encode()
        self._hash_kind = None if config.hash_key is None else config.hash_key.kind

    def hash_key(self, headers: Headers, facts: RequestFacts, client_ip: str) -> bytes | None:
        """The key that source_hash/header_hash balance on, None when the request lacks it."""
        if self.config.balance == "source_hash":
            return client_ip.encode()
        if self._hash_kind == "header":
            for name, value in headers:
                if name.lower() == self._hash_header:
                    return value
            return None
        if self._hash_kind == "cookie" and self._hash_header is not None:
            cookies = [value for name, value in headers if name.lower() == b"cookie"]
            return cookie_value(cookies, self._hash_header)
        return None

    def server_name(self, server: Server) -> str | None:
        """The name a backend server's certificate must carry (TLS only)."""
        if self.config.tls is None:
            return None
        return self.config.tls.server_name or server.host

    def acquire(self, server: Server) -> UpstreamConnection | None:
        """An idle keep-alive connection to `server`, if one is still open and not too old."""
        idle = self.idle[server]
        oldest = time.monotonic() - self.idle_timeout
        while idle:
            conn = idle.pop()
            if conn.transport.is_closing():
                continue
            if conn.idle_since < oldest:
                conn.transport.close()  # the backend may be closing it right now
                continue
            return conn
        return None

    def release(self, server: Server, conn: UpstreamConnection) -> None:
        idle = self.idle.get(server)
        if (
            idle is None
            or len(idle) >= MAX_IDLE_PER_SERVER
            or self.retired
            or not self.shared_pool
            or self.idle_timeout <= 0
        ):
            conn.transport.close()
            return
        conn.idle_since = time.monotonic()
        idle.append(conn)

    def forget(self, server: Server, conn: UpstreamConnection) -> None:
        idle = self.idle.get(server)
        if idle is not None and conn in idle:
            idle.remove(conn)

    def passive_failure(self, server: Server, error: str) -> None:
        tracker = self.tracker_of[server]
        if self.passive is not None:
            if tracker.config.passive:
                tracker.fail_streak += 1  # so that the next success is reported
                self.passive(self.name, server.address, False, error)
        elif tracker.passive_failure(time.monotonic(), error):
            self._health_changed(tracker, error)

    def passive_success(self, server: Server) -> None:
        tracker = self.tracker_of[server]
        if tracker.fail_streak:
            tracker.passive_success()
            if self.passive is not None:
                self.passive(self.name, server.address, True, "")

    def passive_result(self, address: str, ok: bool, error: str) -> None:
        """A worker's passive result, judged here in the master."""
        for server, tracker in self.tracker_of.items():
            if server.address == address:
                if ok:
                    tracker.passive_success()
                elif tracker.passive_failure(time.monotonic(), error):
                    self._health_changed(tracker, error)

    def set_up(self, address: str, up: bool) -> None:
        """The master's verdict, in a worker: take the server in or out."""
        for server in self.servers:
            if server.address == address and server.up != up:
                server.up = up
                if not up:
                    self._close_idle(server)

    def _health_changed(self, tracker: Tracker, reason: str) -> None:
        server = tracker.server
        if self.on_health is not None:  # the workers first: the log line says it is done
            self.on_health(self.name, server.address, server.up)
        log.warning(
            "server up" if server.up else "server down",
            backend=self.name,
            server=server.address,
            reason=reason,
        )
        if not server.up:
            self._close_idle(server)

    def _close_idle(self, server: Server) -> None:
        for conn in self.idle[server]:
            conn.transport.close()
        self.idle[server].clear()

    def close_idle(self) -> None:
        for idle in self.idle.values():
            for conn in idle:
                conn.transport.close()
            idle.clear()


def _server(config: ServerConfig, reuse: dict[str, Server]) -> Server:
    server = reuse.get(config.address)
    if server is None:
        return Server(config)
    server.configure(config)
    return server


class Runtime:
    """One config generation, ready to serve; `previous` hands over its servers."""

    def __init__(
        self,
        config: ProxyConfig,
        node_name: str,
        generation: int,
        previous: Runtime | None = None,
        passive: PassiveSink | None = None,
    ) -> None:
        self.config = config
        self.generation = generation
        self.node_name = node_name
        self.via = node_name.encode()
        self.response_tails = response_tails(self.via)
        self.timeouts = config.proxy.timeouts
        self.limits = config.proxy.limits
        self.access_log = config.proxy.access_log
        self.underscores = config.proxy.underscores_in_headers
        self.head_limit = self.limits.max_header_size + self.limits.max_uri_size
        self.router = Router(config.routes)
        self.backends = {
            name: Backend(b, self.timeouts.upstream_idle, _servers_of(previous, name), passive)
            for name, b in config.backends.items()
        }
        # The shortest WebSocket idle timeout any route sets (the sweeper's pace).
        idles = [self.timeouts.websocket_idle]
        idles += [r.timeouts.websocket_idle for r in config.routes if r.timeouts is not None]
        self.websocket_idle = min((t for t in idles if t > 0), default=0.0)

    def start(self) -> None:
        for backend in self.backends.values():
            backend.checker.start()

    async def stop(self) -> None:
        for backend in self.backends.values():
            backend.retired = True
            await backend.checker.stop()
            backend.close_idle()
