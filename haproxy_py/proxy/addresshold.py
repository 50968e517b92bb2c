"""Holding a released VIP's clients before its fence falls: nothing left in flight.

Whatever this node sends a client right before the VIP leaves it is never
acknowledged: the client's ACKs reach the VIP's new owner, which drops them (its
grace period). Once that segment's retransmission timer fires, the kernel gives
the connection a window of one segment, taken by the retransmission, so the
1001 (or FIN) written after it never leaves (seen on a starved node: `ss -tin`
shows `unacked:1 lost:1 cwnd:1 notsent:4`, the 4 bytes being the close frame,
until the new owner's grace ends and its reset reaches the client).

So before the agent drops a VIP in a planned move, the proxy holds the address
(`POST /hold?address=VIP`), and waits until every client on it has acknowledged
every byte (the socket's send queue is empty), at most `LIMIT`:

- WebSocket tunnels send nothing more (the backend side is no longer read:
  `Tunnel.hold`); the drain's 1001 comes later.
- HTTP keep-alive connections start no new exchange (`ClientConnection.freeze`):
  the response in flight is answered, a next request waits unread. Closing
  them now would send their clients back before the address has moved (to
  this node, or to nobody: a SYN retransmit, 1 s); the drain closes them
  (`leave`: a FIN with nothing in front of it), and a client whose request
  waited retries it, as after any keep-alive close, on the new owner.
- A connection that arrives meanwhile (until `FENCE_WITHIN` after the answer)
  waits the same way (`ClientConnection` asks `holds`).

With nothing in flight when the fence falls, no retransmission timer runs and
the 1001 leaves at once in a whole window, however late the drain comes. The
drain (`drain_address`) ends the hold; without one, it ends after
`RELEASE_AFTER` (the VIP stayed).

What `LIMIT` is for: a client that never acknowledges (gone, or its path
dropping everything) must not stop the move. It bounds how much a planned move
waits for its clients; a client whose ACKs are lost for longer than about 1 s
(the retransmissions at 0.2, 0.6 and 1.4 s after the first send all unanswered)
can still be left with bytes in flight when the fence falls.
"""

from __future__ import annotations

import asyncio
import fcntl
import math
import sys
import termios
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from haproxy_py.proxy.listeners import HeldConnection, IPAddress
    from haproxy_py.proxy.relay import Tunnel

# A client acknowledges within its delayed-ACK time (<= 200 ms); one whose ACK was lost does at
# our next retransmission, 0.2, 0.4, 0.8, 1.6 s apart: 2 s covers a loss of up to about 1 s.
LIMIT = 2.0
RELEASE_AFTER = 10.0  # longer than the agent waits for the next owner (3 s) plus its drain
# The agent drops the address this soon after the hold answered (a starved one too): till then
# new connections wait for the drain; later, the address stayed (a move called off): served.
FENCE_WITHIN = 2.0
POLL = 0.005
RESCAN = 0.05


@dataclass(frozen=True)
class AddressHold:
    """What `hold` found: the WebSockets and HTTP connections held, and how many of them still
    had bytes unacknowledged (or, HTTP, a response to write) when it answered."""

    websockets: int
    connections: int
    unacknowledged: int


class HeldAddresses(dict["IPAddress", float]):
    """The local addresses held now, each to when it is held till (`holding`: from the hold
    until `FENCE_WITHIN` after its answer); each let go at its drain or after `RELEASE_AFTER`.
    A dict, so that the hot path's "anything held?" is a plain truth test."""

    def __init__(self) -> None:
        super().__init__()
        self._ends: dict[IPAddress, asyncio.TimerHandle] = {}

    def holding(self, address: IPAddress | None) -> bool:
        until = self.get(address) if address is not None else None
        return until is not None and asyncio.get_running_loop().time() < until

    def start(self, address: IPAddress, release: Callable[[], None]) -> None:
        """Hold `address`; `release` runs after `RELEASE_AFTER` unless `end` comes first."""
        self.end(address)

        def expired() -> None:
            self.end(address)
            release()

        self[address] = math.inf
        self._ends[address] = asyncio.get_running_loop().call_later(RELEASE_AFTER, expired)

    def answered(self, address: IPAddress) -> None:
        """The hold answered: the address leaves within `FENCE_WITHIN`, or it stayed."""
        if address in self:
            self[address] = asyncio.get_running_loop().time() + FENCE_WITHIN

    def end(self, address: IPAddress) -> None:
        self.pop(address, None)
        handle = self._ends.pop(address, None)
        if handle is not None:
            handle.cancel()

    def end_all(self) -> None:
        for address in list(self):
            self.end(address)


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


def unread(transport: asyncio.BaseTransport) -> int:
    """Bytes the peer sent that this end has not read yet (0 when it cannot tell)."""
    sock = transport.get_extra_info("socket")
    if sock is None:
        return 0
    try:
        waiting = fcntl.ioctl(sock.fileno(), termios.FIONREAD, bytes(4))
    except OSError:
        return 0
    return int.from_bytes(waiting, sys.byteorder, signed=True)


def _pending(transport: asyncio.BaseTransport, conn: HeldConnection | None) -> bool:
    """Whether this client still has bytes to acknowledge (an HTTP one: or a response due)."""
    busy = conn is not None and conn.in_exchange
    return not transport.is_closing() and (busy or unacknowledged(transport) > 0)


async def hold(
    on_address: Callable[[], tuple[list[Tunnel], list[HeldConnection]]], limit: float = LIMIT
) -> AddressHold:
    """Hold what `on_address` lists and wait until every client acknowledged everything, at
    most `limit` s. The address is listed again every `RESCAN` s and before answering (a
    tunnel or connection may be new); in between only the clients still waited for are
    looked at, so a node with many connections spends little on a hold."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    waiting: list[tuple[asyncio.BaseTransport, HeldConnection | None]] = []
    held_tunnels: set[Tunnel] = set()
    held_conns: set[HeldConnection] = set()  # (some are gone before it answers)
    rescan_at = 0.0
    while True:
        now = loop.time()
        fresh = not waiting or now >= rescan_at
        if fresh:
            tunnels, conns = on_address()
            for tunnel in tunnels:
                tunnel.hold()
            for conn in conns:
                conn.freeze()
            waiting = [(t.client_half.transport, None) for t in tunnels]
            waiting += [(c.transport, c) for c in conns]
            held_tunnels.update(tunnels)
            held_conns.update(conns)
            rescan_at = now + RESCAN
        waiting = [(transport, conn) for transport, conn in waiting if _pending(transport, conn)]
        if (fresh and not waiting) or now >= deadline:
            return AddressHold(len(held_tunnels), len(held_conns), len(waiting))
        if waiting:
            await asyncio.sleep(POLL)


def release(tunnels: Iterable[Tunnel], conns: Iterable[HeldConnection]) -> None:
    """The hold ended with no drain (the address stayed): the tunnels send again, and the
    HTTP connections read their next request."""
    for tunnel in tunnels:
        if not tunnel.client_half.transport.is_closing():
            tunnel.release()
    for conn in conns:
        conn.thaw()
