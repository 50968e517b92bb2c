"""Holding a released VIP's WebSocket clients before its fence falls: nothing left in flight.

Whatever this node sends a client right before the VIP leaves it is never
acknowledged: the client's ACKs reach the VIP's new owner, which drops them (its
grace period). Once that segment's retransmission timer fires, the kernel gives
the connection a window of one segment, taken by the retransmission, so the
1001 written after it never leaves (seen on a starved node: `ss -tin` shows
`unacked:1 lost:1 cwnd:1 notsent:4`, the 4 bytes being the close frame, until
the new owner's grace ends and its reset reaches the client).

So before the agent drops a VIP in a planned move, the proxy stops sending on
its tunnels (the backend side is no longer read: `Tunnel.hold`) and waits until
every client has acknowledged every byte (the socket's send queue is empty), at
most `LIMIT`. With nothing in flight when the fence falls, no retransmission
timer runs and the 1001 leaves at once in a whole window, however late the
drain comes. The drain (`drain_address`) ends the hold; without one, it ends
after `RELEASE_AFTER` (the VIP stayed).
"""

from __future__ import annotations

import asyncio
import fcntl
import sys
import termios
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from haproxy_py.proxy.relay import Tunnel

# A client acknowledges within its delayed-ACK time (<= 200 ms); one whose ACK was lost does at
# our next retransmission, 0.2, 0.4, 0.8, 1.6 s apart: 2 s covers a loss of up to about 1 s.
LIMIT = 2.0
RELEASE_AFTER = 10.0  # longer than the agent waits for the next owner (3 s) plus its drain
POLL = 0.005


@dataclass(frozen=True)
class AddressHold:
    """What `hold` found: the WebSockets held, and those with bytes still unacknowledged."""

    websockets: int
    unacknowledged: int


def unacknowledged(transport: asyncio.BaseTransport) -> int:
    """Bytes written to this connection that its peer has not acknowledged (buffered too)."""
    count = transport.get_write_buffer_size() if isinstance(transport, asyncio.Transport) else 0
    sock = transport.get_extra_info("socket")
    if sock is None:
        return count
    try:
        queued = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, bytes(4))
    except OSError:
        return count
    return count + int.from_bytes(queued, sys.byteorder, signed=True)


async def hold(tunnels: list[Tunnel], limit: float = LIMIT) -> AddressHold:
    """Hold `tunnels` and wait until their clients acknowledged everything, at most `limit` s."""
    for tunnel in tunnels:
        tunnel.hold()
    loop = asyncio.get_running_loop()
    loop.call_later(RELEASE_AFTER, _release, tunnels)
    deadline = loop.time() + limit
    waiting = tunnels
    while True:
        waiting = [
            t
            for t in waiting
            if not t.client_half.transport.is_closing() and unacknowledged(t.client_half.transport)
        ]
        if not waiting or loop.time() >= deadline:
            return AddressHold(len(tunnels), len(waiting))
        await asyncio.sleep(POLL)


def _release(tunnels: list[Tunnel]) -> None:
    for tunnel in tunnels:
        if not tunnel.client_half.transport.is_closing():
            tunnel.release()
