"""Client-facing listeners and their sockets.

`bind_socket` opens a listening socket (IP_FREEBIND, so a VIP may arrive
later), or takes the one systemd passed for that address (socket activation,
`LISTEN_FDS`); `Listener` is one `[[listeners]]` entry at run time: its server,
the connections it holds (for drains and the connection limit), its TLS
context; `local_ip` and `send_from_any_address` serve the per-address drain of
a VIP that moved away.

Why sockets from systemd: after a planned move the VIP's address is gone from
this node before its clients are told to go (so that their reconnects reach the
new owner), and the kernel sends from an address it no longer has only on a
socket with IP_TRANSPARENT. Setting that option needs CAP_NET_RAW; systemd sets
it on the listening socket (`Transparent=yes` in haproxy-py.socket) and every
accepted connection inherits it, so the proxy itself needs no capability but
CAP_NET_BIND_SERVICE. A socket so passed can send only on connections it
accepted, from the address the client connected to: no raw packets, no other
source address.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import socket
from collections.abc import MutableMapping
from dataclasses import dataclass
from typing import Any, Protocol

from haproxy_py.proxy.accept import HeaderFirstServer
from haproxy_py.proxy.config import ListenerConfig
from haproxy_py.proxy.tls import ServerTls

_IP_FREEBIND = getattr(socket, "IP_FREEBIND", 15)  # Linux; lets us bind a VIP before it arrives
_IP_TRANSPARENT = getattr(socket, "IP_TRANSPARENT", 19)  # Linux
_IPV6_TRANSPARENT = getattr(socket, "IPV6_TRANSPARENT", 75)  # Linux

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


SD_LISTEN_FDS_START = 3  # sd_listen_fds(3): passed sockets start at this descriptor


def passed_sockets(environ: MutableMapping[str, str] = os.environ) -> list[socket.socket]:
    """The listening sockets systemd passed to this process (none when not socket-activated).

    The variables are removed, so that no child takes them for its own.
    """
    pid, count = environ.pop("LISTEN_PID", ""), environ.pop("LISTEN_FDS", "")
    environ.pop("LISTEN_FDNAMES", None)
    if pid != str(os.getpid()) or not count.isdigit():
        return []
    fds = range(SD_LISTEN_FDS_START, SD_LISTEN_FDS_START + int(count))
    return [socket.socket(fileno=fd) for fd in fds]


class Passed:
    """Sockets passed by systemd, by the address they are bound to.

    A listener gets a duplicate, and the passed socket stays here: a listener
    closed by a whole-proxy drain is listened on again by `undrain` with the
    same socket (and its IP_TRANSPARENT); meanwhile its connections wait in the
    backlog, as they do while systemd restarts the proxy.
    """

    def __init__(self, sockets: list[socket.socket] | None = None) -> None:
        self._sockets: dict[tuple[str, int], socket.socket] | None = None
        if sockets is not None:
            self._sockets = {sock.getsockname()[:2]: sock for sock in sockets}

    def take(self, sockaddr: tuple[str, int]) -> socket.socket | None:
        if self._sockets is None:
            self._sockets = {sock.getsockname()[:2]: sock for sock in passed_sockets()}
        sock = self._sockets.get(sockaddr)
        return None if sock is None else sock.dup()


PASSED = Passed()


def passed_socket(host: str, port: int, passed: Passed = PASSED) -> socket.socket | None:
    """A duplicate of the socket systemd passed for host:port (None: none was passed)."""
    return _take(passed, _resolve(host, port)[1])


def bind_socket(
    host: str, port: int, passed: Passed = PASSED, reuse_port: bool = False
) -> socket.socket:
    """A listening-ready TCP socket; OSError naming the address and the kernel's reason.

    `reuse_port`: one of an SO_REUSEPORT group, one per worker process (`master`);
    a passed socket is taken as it is (only systemd can make it transparent)."""
    family, sockaddr = _resolve(host, port)
    inherited = _take(passed, sockaddr)
    if inherited is not None:
        return inherited
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        with contextlib.suppress(OSError):  # elsewhere the address must exist before we bind
            sock.setsockopt(socket.IPPROTO_IP, _IP_FREEBIND, 1)
        sock.bind(sockaddr)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise OSError(exc.errno, f"cannot listen on {host}:{port}: {exc.strerror}") from None
    return sock


def _resolve(host: str, port: int) -> tuple[socket.AddressFamily, tuple[Any, ...]]:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except OSError as exc:
        raise OSError(exc.errno, f"cannot listen on {host}:{port}: {exc.strerror}") from None
    family, _, _, _, sockaddr = infos[0]
    return family, sockaddr


def _take(passed: Passed, sockaddr: tuple[Any, ...]) -> socket.socket | None:
    inherited = passed.take((str(sockaddr[0]), int(sockaddr[1])))
    if inherited is not None:
        inherited.setblocking(False)
    return inherited


class HeldConnection(Protocol):
    """What the listener and the drains use of a client connection."""

    transport: asyncio.Transport
    in_exchange: bool  # a request is being answered
    keep_alive: bool  # False: close once the response is written

    def freeze(self) -> None:
        """Its address is held (`addresshold`): read no next request."""

    def thaw(self) -> None:
        """The hold ended with no drain: serve again."""

    def leave(self) -> None:
        """Its address moved away: close (a FIN) after the response in flight, or now."""


class Listener:
    """One client-facing listener and the connections it holds open."""

    def __init__(self, config: ListenerConfig) -> None:
        self.config = config
        self.active = 0  # client connections, including those turned into tunnels
        self.connections: set[HeldConnection] = set()
        self.server: asyncio.Server | HeaderFirstServer | None = None
        self.bound: tuple[str, int] | None = None  # the address actually bound (port 0 resolved)
        self.emptied: asyncio.Event | None = None  # set when `connections` empties (drain)
        # One SSLContext for the listener's life; reloads swap its certificates.
        self.tls: ServerTls | None = None if config.tls is None else ServerTls(config.tls)

    def same_socket(self, config: ListenerConfig) -> bool:
        """Whether `config` can be served by this listener's socket (same address, TLS or not)."""
        return socket_kind(self.config) == socket_kind(config)

    def reconfigure(self, config: ListenerConfig) -> None:
        self.config = config
        if self.tls is not None and config.tls is not None:
            self.tls.update(config.tls)

    def forget(self, conn: HeldConnection) -> None:
        self.connections.discard(conn)
        if not self.connections and self.emptied is not None:
            self.emptied.set()

    @property
    def address(self) -> tuple[str, int]:
        if self.bound is None:
            raise RuntimeError(f"listener {self.config.name} is not started")
        return self.bound


def local_ip(transport: asyncio.BaseTransport) -> IPAddress | None:
    """The address the client connected to (a v4-mapped IPv6 address as IPv4); None if gone."""
    local = transport.get_extra_info("sockname")
    if not isinstance(local, tuple):
        return None
    try:
        ip = ipaddress.ip_address(local[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def send_from_any_address(transport: asyncio.BaseTransport) -> bool:
    """Let a connection keep sending after its local address left this node; False if refused.

    A moved VIP is removed from the interface before its clients are told to
    go, so that their reconnects reach the new owner; without IP_TRANSPARENT the
    kernel refuses to route packets from an address it no longer has, and the
    1001 (or FIN) would never leave. A connection accepted on a socket systemd
    made transparent has it already; otherwise setting it needs CAP_NET_RAW or
    CAP_NET_ADMIN.
    """
    sock = transport.get_extra_info("socket")
    if sock is None:
        return False
    level, option = (
        (socket.IPPROTO_IPV6, _IPV6_TRANSPARENT)
        if sock.family == socket.AF_INET6
        else (socket.IPPROTO_IP, _IP_TRANSPARENT)
    )
    try:
        if sock.getsockopt(level, option):
            return True
        sock.setsockopt(level, option, 1)
    except OSError:
        return False
    return True


@dataclass(frozen=True)
class AddressDrain:
    """What `drain_address` started: WebSockets sent a 1001, HTTP connections closing."""

    websockets: int
    connections: int
    # False when closes could not be sent from an address already gone (no capability)
    can_send: bool


def socket_kind(config: ListenerConfig) -> tuple[object, ...]:
    """What must match for a reload to keep a listener's socket."""
    header_first = config.tls is not None and config.proxy_protocol
    return config.host, config.port, config.tls is None, header_first
