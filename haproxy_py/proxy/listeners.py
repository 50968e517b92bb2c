"""Client-facing listeners and their sockets.

`bind_socket` opens a listening socket (IP_FREEBIND, so a VIP may arrive
later); `Listener` is one `[[listeners]]` entry at run time: its server, the
connections it holds (for drains and the connection limit), its TLS context;
`local_ip` and `send_from_any_address` serve the per-address drain of a VIP
that moved away.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
from dataclasses import dataclass
from typing import Protocol

from haproxy_py.proxy.accept import HeaderFirstServer
from haproxy_py.proxy.config import ListenerConfig
from haproxy_py.proxy.tls import ServerTls

_IP_FREEBIND = getattr(socket, "IP_FREEBIND", 15)  # Linux; lets us bind a VIP before it arrives
_IP_TRANSPARENT = getattr(socket, "IP_TRANSPARENT", 19)  # Linux
_IPV6_TRANSPARENT = getattr(socket, "IPV6_TRANSPARENT", 75)  # Linux

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def bind_socket(host: str, port: int, reuse_port: bool = False) -> socket.socket:
    """A listening-ready TCP socket; OSError naming the address and the kernel's reason.

    `reuse_port`: one of an SO_REUSEPORT group, one per worker process (`master`)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except OSError as exc:
        raise OSError(exc.errno, f"cannot listen on {host}:{port}: {exc.strerror}") from None
    family, _, _, _, sockaddr = infos[0]
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


class HeldConnection(Protocol):
    """What the listener and the drains use of a client connection."""

    transport: asyncio.Transport
    in_exchange: bool  # a request is being answered
    keep_alive: bool  # False: close once the response is written


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
    go, so that their reconnects reach the new owner; without this option the
    kernel refuses to route packets from an address it no longer has, and the
    1001 (or FIN) would never leave. Needs CAP_NET_RAW or CAP_NET_ADMIN.
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
