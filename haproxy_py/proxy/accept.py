"""Listeners with both `proxy_protocol` and `tls`: the PROXY header comes before the TLS handshake.

asyncio's TLS server starts the handshake on the first byte, and a PROXY
header read by the protocol would take the start of the ClientHello with it.
So such a listener accepts connections itself, reads exactly the header
(peeking, then taking only its bytes), and only then hands the socket to the
event loop with TLS. It offers the parts of `asyncio.Server` the proxy uses
(`close`, `is_serving`, `wait_closed`).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
import ssl
from collections.abc import Callable
from typing import Any

import structlog

from haproxy_py.cluster.tasks import supervised
from haproxy_py.proxy import proxyproto

log = structlog.get_logger(__name__)

# The longest header there can be: v2's 16 bytes and a 16-bit body length.
_MAX_HEADER = 16 + 0xFFFF

Networks = tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]


def trusted(peer: str, networks: Networks) -> bool:
    """Whether `peer` is in `networks` (no networks: nobody is).

    A dual-stack listener sees IPv4 peers as `::ffff:a.b.c.d`; they match IPv4 networks.
    """
    address = ipaddress.ip_address(peer)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address in network for network in networks)


async def _readable(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> None:
    ready: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_reader(sock.fileno(), wake)
    try:
        await ready
    finally:
        loop.remove_reader(sock.fileno())


async def read_header(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> proxyproto.Result:
    """Take exactly the PROXY header off a non-blocking socket; what follows stays unread.

    Bytes that are a valid header prefix are taken as they come; the bytes of a
    complete header are taken after a peek showed where it ends.
    """
    taken = b""
    while True:
        await _readable(loop, sock)
        try:
            peek = sock.recv(_MAX_HEADER - len(taken), socket.MSG_PEEK)
        except BlockingIOError:
            continue
        if not peek:
            return proxyproto.Invalid("connection closed before a complete PROXY header")
        result = proxyproto.parse(taken + peek)
        if isinstance(result, proxyproto.NeedMore):
            taken += sock.recv(len(peek))
        elif isinstance(result, proxyproto.ProxyHeader):
            sock.recv(result.length - len(taken))
            return result
        else:
            return result


class HeaderFirstServer:
    """Accept, read the PROXY header (from a trusted peer, in time), then serve over TLS."""

    def __init__(
        self,
        sock: socket.socket,
        factory: Callable[[proxyproto.ProxyHeader], asyncio.Protocol],
        context: ssl.SSLContext,
        timeout: Callable[[], float],
        networks: Callable[[], Networks],
        on_drop: Callable[[str, str], None],
    ) -> None:
        self.loop = asyncio.get_running_loop()
        self.sock = sock
        self.factory = factory
        self.context = context
        self.timeout = timeout  # read at each connection: a reload may change it
        self.networks = networks  # the listener's trusted_proxies, read at each connection
        self.on_drop = on_drop  # (reason, peer): counted and logged by the proxy
        self.sockets = [sock]
        self._pending: set[asyncio.Task[Any]] = set()
        sock.listen(1024)
        self._accepting: asyncio.Task[None] | None = self.loop.create_task(
            supervised("accept", self._accept)
        )

    async def _accept(self) -> None:
        while True:
            try:
                conn, peer = await self.loop.sock_accept(self.sock)
            except OSError as exc:
                log.warning("accept failed", error=exc.strerror or str(exc))
                await asyncio.sleep(0.1)  # e.g. out of file descriptors: do not spin
                continue
            task = self.loop.create_task(self._serve(conn, peer[0]))
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)

    async def _serve(self, conn: socket.socket, peer: str) -> None:
        conn.setblocking(False)
        if not trusted(peer, self.networks()):
            self._drop(conn, peer, "PROXY header not accepted from this address (trusted_proxies)")
            return
        limit = self.timeout() or None
        try:
            async with asyncio.timeout(limit):
                result = await read_header(self.loop, conn)
                if not isinstance(result, proxyproto.ProxyHeader):
                    assert isinstance(result, proxyproto.Invalid)
                    self._drop(conn, peer, result.reason)
                    return
                await self.loop.connect_accepted_socket(
                    lambda: self.factory(result),
                    conn,
                    ssl=self.context,
                    ssl_handshake_timeout=limit,
                )
        except TimeoutError:
            self._drop(conn, peer, "no PROXY header and TLS handshake in time")
        except (OSError, ssl.SSLError) as exc:
            log.info("TLS handshake failed", peer=peer, error=str(exc))
            conn.close()
        except asyncio.CancelledError:
            conn.close()
            raise

    def _drop(self, conn: socket.socket, peer: str, reason: str) -> None:
        self.on_drop(reason, peer)
        conn.close()

    def is_serving(self) -> bool:
        return self._accepting is not None

    def close(self) -> None:
        """Stop accepting; connections already handed to the loop live on."""
        if self._accepting is not None:
            self._accepting.cancel()
            self._accepting = None
            for task in list(self._pending):
                task.cancel()
            self.sock.close()

    async def wait_closed(self) -> None:
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*self._pending, return_exceptions=True)
