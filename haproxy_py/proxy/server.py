"""The proxy node in one object: listeners, the current runtime, tunnels, admin API.

In-process use (tests, embedding):

    server = ProxyServer(parse_proxy(doc), node_name="node-a")
    await server.start()              # binds everything (port 0 works)
    host, port = server.address("web")
    ...
    await server.stop()

`drain()` is the graceful stop (SIGTERM, `POST /drain`): it stops accepting,
sends every WebSocket a `1001 Going Away` at a frame boundary so clients
reconnect elsewhere at once, lets HTTP exchanges finish, and after the drain
timeout closes what is left; `undrain()` listens again. `drain_address()`
(`POST /drain?address=VIP`) does the same to the connections that came in on
one local address only, when a VIP has moved to another node: the node keeps
serving, its listeners stay open. `reload()` (SIGHUP) swaps in a new config:
`runtime` is the config-derived state, built anew and assigned, so new
requests use it while those in flight finish on the old one; listeners whose
address is unchanged keep their socket (and take new certificates), so no
established connection is dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import socket
import time
from collections.abc import Callable
from typing import Protocol

import structlog

from haproxy_py.cluster.tasks import supervised
from haproxy_py.proxy.accept import HeaderFirstServer
from haproxy_py.proxy.accesslog import AccessLog
from haproxy_py.proxy.addresshold import AddressHold, HeldAddresses, hold, release
from haproxy_py.proxy.admin import AdminServer
from haproxy_py.proxy.adminauth import restart_needed
from haproxy_py.proxy.config import ProxyConfig
from haproxy_py.proxy.frontend import ClientConnection
from haproxy_py.proxy.iplimits import IpLimiter
from haproxy_py.proxy.listeners import (
    AddressDrain,
    HeldConnection,
    IPAddress,
    Listener,
    bind_socket,
    local_ip,
    send_from_any_address,
)
from haproxy_py.proxy.relay import Tunnel, Tunnels
from haproxy_py.proxy.report import Stats, TrafficReport, report_of
from haproxy_py.proxy.runtime import Runtime

log = structlog.get_logger(__name__)


class Plane(Protocol):
    """What a worker process gives its `ProxyServer` (`worker.Worker`): listening sockets
    the master bound, and health and connection counts shared with the master."""

    def passive(self, backend: str, address: str, ok: bool, error: str) -> None:
        """A passive health result, for the master to judge (`runtime.PassiveSink`)."""

    def socket(self, host: str, port: int) -> socket.socket:
        """The listening socket for host:port (OSError if the master sent none)."""

    def prepare(self, runtime: Runtime) -> None:
        """Make a new runtime count in the shared table and take the master's health."""


class ProxyServer:
    """The whole data plane in one process; with a `plane`, one worker of several (no admin
    API, no health checks: the master has them)."""

    def __init__(self, config: ProxyConfig, node_name: str, plane: Plane | None = None) -> None:
        self.plane = plane
        self._bind: Callable[[str, int], socket.socket] = (
            bind_socket if plane is None else plane.socket
        )
        self.runtime = self._runtime(config, node_name, 1, None)
        self.stats = Stats()
        self.access_log = AccessLog()
        self.tunnels = Tunnels(self._tunnel_ended)
        self.listeners = [Listener(c) for c in config.listeners]
        self.admin = AdminServer(self)
        self.draining = False
        self.held = HeldAddresses()  # addresses about to leave (`addresshold`)
        self.ip_limits = IpLimiter()
        self._drops_logged_at = -1.0
        self._drops_unlogged = 0
        self.started_at = time.time()
        self.loop: asyncio.AbstractEventLoop
        self._sweeper: asyncio.Task[None] | None = None
        self._drain_task: asyncio.Task[bool] | None = None
        # A moved address's drain waiting for its timeout, with what it waits for.
        self._address_drains: dict[
            asyncio.TimerHandle, tuple[list[Tunnel], list[HeldConnection]]
        ] = {}
        self.closed_at_timeout = 0  # by the last drain

    async def start(self) -> None:
        """Bind the listeners and the admin API and start health checks; OSError if a bind fails."""
        self.loop = asyncio.get_running_loop()
        self._start_checks(self.runtime)
        try:
            for listener in self.listeners:
                await self._listen(listener, self._bind(listener.config.host, listener.config.port))
            if self.plane is None:
                await self.admin.start()
        except BaseException:
            await self.stop()
            raise
        self._sweeper = self.loop.create_task(supervised("idle sweeper", self._sweep_idle_tunnels))
        log.info(
            "proxy started",
            node=self.runtime.node_name,
            listeners={lst.config.name: "{}:{}".format(*lst.address) for lst in self.listeners},
            admin=None if self.plane is not None else "{}:{}".format(*self.admin.address),
            loop=type(self.loop).__module__.split(".")[0],
        )

    async def _listen(self, listener: Listener, sock: socket.socket) -> None:
        listener.bound = sock.getsockname()[:2]
        handshake = self.runtime.timeouts.client_header or None
        if listener.tls is not None and listener.config.proxy_protocol:
            listener.server = HeaderFirstServer(
                sock,
                lambda header: ClientConnection(self, listener, preread=header),
                listener.tls.context,
                timeout=lambda: self.runtime.timeouts.client_header,
                networks=lambda: listener.config.trusted_proxies,
                on_drop=self.dropped,
            )
            return
        listener.server = await self.loop.create_server(
            functools.partial(ClientConnection, self, listener),
            sock=sock,
            backlog=1024,
            ssl=None if listener.tls is None else listener.tls.context,
            ssl_handshake_timeout=None if listener.tls is None else handshake,
        )

    def _runtime(
        self, config: ProxyConfig, node_name: str, generation: int, previous: Runtime | None
    ) -> Runtime:
        plane = self.plane
        runtime = Runtime(
            config, node_name, generation, previous, None if plane is None else plane.passive
        )
        if plane is not None:
            plane.prepare(runtime)
        return runtime

    def _start_checks(self, runtime: Runtime) -> None:
        if self.plane is None:  # a worker's master runs the checks
            runtime.start()

    def listener_states(self) -> list[tuple[str, tuple[str, int] | None, bool]]:
        return [
            (lst.config.name, lst.bound, lst.server is not None and lst.server.is_serving())
            for lst in self.listeners
        ]

    async def traffic(self) -> TrafficReport:
        return report_of(self)

    async def address_drain(self, address: IPAddress) -> AddressDrain:
        return self.drain_address(address)

    def address(self, listener: str) -> tuple[str, int]:
        """The bound (host, port) of a listener, by name (useful with port 0)."""
        for lst in self.listeners:
            if lst.config.name == listener:
                return lst.address
        raise KeyError(listener)

    def _stop_accepting(self) -> None:
        for listener in self.listeners:
            if listener.server is not None:
                listener.server.close()

    def start_drain(self) -> None:
        """Begin draining in the background (the admin API's `POST /drain`)."""
        if not self.draining:
            self._drain_task = self.loop.create_task(self.drain())

    async def drain(self, grace: float | None = None) -> bool:
        """Stop accepting, close WebSockets with 1001, finish HTTP; False if `grace` ran out.

        `grace` defaults to the `drain` timeout. What is still open then is closed. What
        came in on addresses that left this node is closed at once: their clients were told
        to go and cannot answer here.
        """
        if grace is None:
            grace = self.runtime.timeouts.drain
        self.draining = True
        self._stop_accepting()
        for handle, (tunnels, conns) in list(self._address_drains.items()):
            handle.cancel()
            self._address_drained(handle, tunnels, conns)
        closing = self.tunnels.drain_all()
        log.info("draining", websockets=closing, grace=grace)
        deadline = self.loop.time() + grace
        for listener in self.listeners:
            for conn in list(listener.connections):
                conn.leave()  # now, or once the response in flight is written
        for listener in self.listeners:
            if listener.connections:
                listener.emptied = asyncio.Event()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout_at(deadline):
                        await listener.emptied.wait()
        if await self.tunnels.wait_closed(max(0.0, deadline - self.loop.time())):
            leftover = sum(len(lst.connections) for lst in self.listeners)
        else:
            leftover = len(self.tunnels)
            self.tunnels.abort_all()
        for listener in self.listeners:
            for conn in list(listener.connections):
                conn.transport.abort()
        log.info("drained", closed_at_timeout=leftover)
        self.closed_at_timeout = leftover
        return leftover == 0

    def tunnels_on(self, address: IPAddress) -> list[Tunnel]:
        """The WebSocket tunnels whose client came in on local `address`."""
        return [t for t in self.tunnels.open if local_ip(t.client_half.transport) == address]

    def connections_on(self, address: IPAddress) -> list[HeldConnection]:
        """The HTTP client connections that came in on local `address`."""
        return [
            conn
            for listener in self.listeners
            for conn in listener.connections
            if local_ip(conn.transport) == address
        ]

    def _on_address(self, address: IPAddress) -> tuple[list[Tunnel], list[HeldConnection]]:
        return self.tunnels_on(address), self.connections_on(address)

    def holds(self, transport: asyncio.BaseTransport) -> bool:
        """Whether this connection came in on an address held now (ask only if `held`)."""
        return self.held.holding(local_ip(transport))

    async def address_hold(self, address: IPAddress) -> AddressHold:
        """Before `address` leaves this node: its clients acknowledged all, its keep-alive
        connections and new ones frozen (`addresshold`)."""
        self.held.start(address, lambda: release(*self._on_address(address)))
        held = await hold(functools.partial(self._on_address, address))
        self.held.answered(address)
        log.info("holding address", address=str(address), **dataclasses.asdict(held))
        return held

    async def address_unhold(self, address: IPAddress) -> None:
        """`address` stayed on this node (moved back, or the move called off): serve what its
        hold holds now, not when the hold would end by itself."""
        if address in self.held:
            self.held.end(address)
            release(*self._on_address(address))
            log.info("address held no more", address=str(address))

    def drain_address(self, address: IPAddress) -> AddressDrain:
        """Send 1001 to the WebSockets and close the idle HTTP connections on local `address`.

        For a VIP that moved away: its clients reconnect to the new owner at
        once. A WebSocket client gets a FIN behind its 1001 and is read on
        until its answer (which comes only if the VIP comes back). HTTP
        exchanges in flight finish (with `Connection: close`); what is still
        open after the drain timeout is closed. Listeners, other addresses and
        `/healthz` are untouched.
        """
        self.held.end(address)
        tunnels, conns = self._on_address(address)
        can_send = True
        for tunnel in tunnels:
            can_send = send_from_any_address(tunnel.client_half.transport) and can_send
            tunnel.drain(half_close=True)
        for conn in conns:
            can_send = send_from_any_address(conn.transport) and can_send
            conn.leave()
        if tunnels or conns:
            # Leaving anyway: a moved address's clients cannot answer here, so do not wait.
            delay = 0.0 if self.draining else self.runtime.timeouts.drain
            handle: asyncio.TimerHandle
            handle = self.loop.call_later(
                delay, lambda: self._address_drained(handle, tunnels, conns)
            )
            self._address_drains[handle] = (tunnels, conns)
        log.info(
            "draining address",
            address=str(address),
            websockets=len(tunnels),
            connections=len(conns),
        )
        if not can_send and (tunnels or conns):
            log.warning(
                "no close can leave from an address this node no longer has",
                address=str(address),
                effect="its clients see their connections time out instead",
                fix="start it from haproxy-py.socket (Transparent=yes), or give it CAP_NET_RAW",
            )
        return AddressDrain(len(tunnels), len(conns), can_send)

    def _address_drained(
        self,
        handle: asyncio.TimerHandle,
        tunnels: list[Tunnel],
        conns: list[HeldConnection],
    ) -> None:
        """The drain timeout of one `drain_address`: close what did not finish."""
        self._address_drains.pop(handle, None)
        left = [t for t in tunnels if t in self.tunnels.open]
        for tunnel in left:
            tunnel.expire()
        open_conns = [c for c in conns if any(c in lst.connections for lst in self.listeners)]
        for conn in open_conns:
            conn.transport.abort()
        if left or open_conns:
            log.info("address drained", closed_at_timeout=len(left) + len(open_conns))

    async def undrain(self) -> None:
        """Back in service: listen again on the same addresses, `/healthz` healthy again."""
        if self._drain_task is not None:
            self._drain_task.cancel()
            self._drain_task = None
        for listener in self.listeners:
            if listener.server is None or not listener.server.is_serving():
                host, port = listener.bound or (listener.config.host, listener.config.port)
                await self._listen(listener, self._bind(host, port))
        self.draining = False
        log.info("undrained")

    async def reload(self, config: ProxyConfig) -> None:
        """Serve `config` from now on; OSError (old config still whole) if a new bind fails.

        Listeners are matched by name: an unchanged address keeps its socket and
        takes the new settings and certificates; a new or moved one is bound
        first, so a failing bind changes nothing; a removed one stops accepting.
        Open connections and WebSockets stay where they are.
        """
        current = {lst.config.name: lst for lst in self.listeners}
        kept: dict[str, Listener] = {}
        fresh: list[tuple[Listener, socket.socket]] = []
        try:
            for lc in config.listeners:
                old = current.get(lc.name)
                if old is not None and old.same_socket(lc):
                    kept[lc.name] = old
                    continue
                if old is not None and (old.config.host, old.config.port) == (lc.host, lc.port):
                    if old.server is not None:
                        old.server.close()  # the same address with TLS switched: rebind
                    current.pop(lc.name)
                fresh.append((Listener(lc), self._bind(lc.host, lc.port)))
        except OSError:
            for _, sock in fresh:
                sock.close()
            raise
        old_runtime = self.runtime
        config = admin_as_running(old_runtime.config, config)
        runtime = self._runtime(
            config, old_runtime.node_name, old_runtime.generation + 1, old_runtime
        )
        self._start_checks(runtime)
        self.runtime = runtime
        listeners = []
        for lc in config.listeners:
            if lc.name in kept:
                kept[lc.name].reconfigure(lc)
                listeners.append(kept[lc.name])
        for listener, sock in fresh:
            if not self.draining:
                await self._listen(listener, sock)
            else:
                listener.bound = sock.getsockname()[:2]
                sock.close()
            listeners.append(listener)
        for name, old in current.items():
            if name not in kept and old.server is not None:
                old.server.close()
        self.listeners = listeners
        await old_runtime.stop()
        log.info("config reloaded", generation=runtime.generation)

    async def stop(self) -> None:
        """Close everything now: listeners, connections, tunnels, checks, admin API."""
        self._stop_accepting()
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for handle in self._address_drains:
            handle.cancel()
        self._address_drains.clear()
        self.held.end_all()
        for listener in self.listeners:
            for conn in list(listener.connections):
                conn.transport.abort()
        for tunnel in list(self.tunnels.open):
            tunnel.client_half.transport.abort()
            tunnel.upstream_half.transport.abort()
        await self.runtime.stop()
        if self.plane is None:
            await self.admin.stop()
        for listener in self.listeners:
            if listener.server is not None:
                await listener.server.wait_closed()
                listener.server = None
        self.access_log.flush()
        await asyncio.to_thread(self.access_log.close)
        log.info("proxy stopped", node=self.runtime.node_name)

    def dropped(self, reason: str, peer: str) -> None:
        """Count a connection dropped before HTTP; log at most one line a second, so a
        flood of them cannot push the proxy's other lines out of a rate-limited journal."""
        self.stats.connections_dropped += 1
        now = time.monotonic()
        if now - self._drops_logged_at < 1.0:
            self._drops_unlogged += 1
            return
        log.warning("connection dropped", reason=reason, peer=peer, not_logged=self._drops_unlogged)
        self._drops_logged_at, self._drops_unlogged = now, 0

    def _tunnel_ended(self, tunnel: Tunnel) -> None:
        tunnel.server.release()
        tunnel.listener.active -= 1
        self.ip_limits.release(tunnel.client_ip)
        if self.runtime.access_log:
            self.access_log.websocket(
                tunnel.backend,
                tunnel.server.address,
                tunnel.client_ip,
                round((time.monotonic() - tunnel.started) * 1000, 2),
                tunnel.bytes_in,
                tunnel.bytes_out,
                tunnel.close_code,
                tunnel.closed_by,
            )

    async def _sweep_idle_tunnels(self) -> None:
        """Close tunnels idle for their `websocket_idle`, checked every quarter of the
        shortest one but at least every 5 s (so a reload that shortens it applies soon)."""
        while True:
            runtime = self.runtime
            idle = runtime.websocket_idle
            await asyncio.sleep(min(5.0, max(0.05, idle / 4)) if idle > 0 else 1.0)
            if self.tunnels.open:
                closed = self.tunnels.sweep_idle(self.loop.time(), runtime.timeouts.send or 5.0)
                if closed:
                    log.info("idle websockets closed", count=closed)


def admin_as_running(old: ProxyConfig, new: ProxyConfig) -> ProxyConfig:
    """`new` with the admin listener's bind and TLS as they run: those apply from the next
    start (said in the log); who may change the node (tokens, names, CRL) applies now."""
    stale = restart_needed(old.admin, new.admin)
    if not stale:
        return new
    log.warning("admin settings changed that apply only after a restart", settings=stale)
    return dataclasses.replace(new, admin=dataclasses.replace(old.admin, auth=new.admin.auth))
