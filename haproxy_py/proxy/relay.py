"""The WebSocket tunnel: after the backend's 101 the two sockets relay bytes, as NGINX does.

The HTTP machinery is dropped at the switch: both transports get a `_Half`
protocol (`transport.set_protocol`) and nothing else stays referenced, so an
idle tunnel costs two small slotted objects plus the transports. Each read is
one `write` on the other socket; once a direction has read 16 KiB at once, its
reads go into one 256 KiB buffer shared by the process's tunnels (`ReadBuffer`),
not into a new `bytes` per read. Backpressure: when a
transport's write buffer passes its high-water mark its own protocol pauses
reading on the peer that feeds it, and resumes it below the low-water mark.

Frames are not decoded, but each direction has a `wsframes.FrameTracker`
that reads the frame headers going by (payloads are skipped by arithmetic):
it gives the close code for the session's log line, and lets a drain put a
`1001 Going Away` close frame between two frames of each direction. After
its close the proxy forwards nothing more in that direction; it waits for
each endpoint's answering close, then closes both sockets, as a WebSocket
server ending a session would. A drain of an address that left this node
also sends the client a FIN behind its 1001 and reads on (`Tunnel.drain`).
The `Tunnels` registry counts open tunnels, closes idle ones (and aborts
those whose close cannot flush because a peer stopped reading), and drains or
closes them all. Bytes that crossed the 101 (the backend's in the same read,
the client's held until the switch) go through the trackers like any other,
so a drain's 1001 always lands between two frames.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from haproxy_py.proxy.balancer import Server
from haproxy_py.proxy.wsframes import (
    GOING_AWAY,
    OPCODE_CLOSE,
    FrameTracker,
    close_frame,
    masked_close_frame,
)

if TYPE_CHECKING:
    from haproxy_py.proxy.listeners import Listener


# The states of a `_Half`.
RELAY, DRAINING, STOPPED = "relay", "draining", "stopped"
# The longest frame with a one-byte length: 2 header bytes, a mask key, 125 payload bytes.
_SMALL_FRAME_MAX = 2 + 4 + 125
BUFFERED_FROM = 16 * 1024  # a read this large turns a half into a `_BufferedHalf`


class ReadBuffer:
    """The one buffer the large reads of an event loop's tunnels go into: a read is
    written out before the next one, so no copy into a new `bytes` per read. When a write
    leaves bytes queued, the transport holds a view of them, and the next read gets a
    fresh buffer instead (the old one lives on until that write is done)."""

    SIZE = 256 * 1024  # a read of at most this much (as uvloop reads without it)

    def __init__(self) -> None:
        self.view = memoryview(bytearray(self.SIZE))

    def renew(self) -> None:
        self.view = memoryview(bytearray(self.SIZE))


class _Half(asyncio.BaseProtocol):
    """One direction of a tunnel: bytes read from `transport` are written to `peer`.

    `state` is RELAY normally; DRAINING while a drain waits for this direction's
    next frame boundary to put its close frame there; STOPPED once that close is
    written (what this side still sends is read, tracked and dropped).

    A half starts as a `_StreamHalf` (the event loop hands it each read as a new
    `bytes`: the cheapest for small messages) and is replaced by a `_BufferedHalf`
    at its first large read (reads into the shared `ReadBuffer`: no copy of the
    payload); the two differ only in how reads arrive. Single inheritance, as mypyc
    compiles it: uvloop reads into the buffer of any protocol with `get_buffer`
    (plain asyncio only for an `asyncio.BufferedProtocol`: there, both halves get
    `data_received`).
    """

    __slots__ = (
        "aligned",
        "frames",
        "nbytes",
        "peer",
        "state",
        "to_server",
        "transport",
        "tunnel",
    )

    def __init__(
        self, tunnel: Tunnel, transport: asyncio.Transport, peer: asyncio.Transport, to_server: bool
    ) -> None:
        self.tunnel = tunnel
        self.transport = transport
        self.peer = peer
        self.to_server = to_server  # frames going to the backend are masked
        self.nbytes = 0
        self.frames = FrameTracker()
        self.aligned = True  # `frames.at_boundary`, kept here for the fast path
        self.state = RELAY

    def data_received(self, data: bytes | memoryview) -> None:
        n = len(data)
        self.nbytes += n
        if self.state is not RELAY:
            self._drain_received(data)
            return
        self.peer.write(data)
        if self.aligned and 2 <= n <= _SMALL_FRAME_MAX and data[0] & 0x0F != OPCODE_CLOSE:
            # The common small message: one whole frame (payload length under 126) in
            # one read leaves the tracker where it was, at a boundary, so skip it.
            second = data[1]
            length = second & 0x7F
            if length < 126 and n == length + (6 if second & 0x80 else 2):
                return
        elif n >= BUFFERED_FROM and not isinstance(self, _BufferedHalf):
            self._read_into_buffer()._track(data)
            return
        self._track(data)

    def _read_into_buffer(self) -> _BufferedHalf:
        """From now on read into the shared buffer: the same state in a `_BufferedHalf`."""
        half = _BufferedHalf(self.tunnel, self.transport, self.peer, self.to_server)
        half.nbytes, half.frames, half.aligned, half.state = (
            self.nbytes,
            self.frames,
            self.aligned,
            self.state,
        )
        self.tunnel.replace_half(self, half)
        self.transport.set_protocol(half)
        return half

    def _relay(self, data: bytes | memoryview) -> None:
        """`data_received` for bytes already counted."""
        self.peer.write(data)
        self._track(data)

    def _track(self, data: bytes | memoryview) -> None:
        frames = self.frames
        frames.feed(data)
        self.aligned = frames.at_boundary
        if frames.close_seen and self.tunnel.closed_by is None:
            self.tunnel.first_close(self)

    def drain(self) -> None:
        """Send the peer a 1001 close at this direction's next frame boundary.

        Nothing is sent when this side already sent its own close (the peer must
        not get two).
        """
        if self.state is not RELAY or self.frames.close_seen:
            return
        if self.frames.at_boundary:
            self._send_close()
        else:
            self.state = DRAINING

    def _drain_received(self, data: bytes | memoryview) -> None:
        frames = self.frames
        if self.state is DRAINING:
            upto = frames.feed_to_boundary(data)
            self.peer.write(data[:upto])
            if not frames.at_boundary:
                return
            if frames.close_seen:  # the frame that ended was this side's own close
                self.state = RELAY
                self._relay(data[upto:])
                self.tunnel.settle()
                return
            self._send_close()
            data = data[upto:]
        frames.feed(data)
        self.tunnel.settle()

    def _send_close(self) -> None:
        frame = masked_close_frame(GOING_AWAY) if self.to_server else close_frame(GOING_AWAY)
        self.peer.write(frame)
        self.state = STOPPED
        tunnel = self.tunnel
        if tunnel.half_close and not self.to_server:
            self.peer.write_eof()  # the client's FIN, right behind its 1001
        if tunnel.closed_by is None:
            tunnel.close_code, tunnel.closed_by = GOING_AWAY, "proxy"

    def _end_peer(self) -> None:
        """This side ended: close the other (after flushing what is buffered). Not a client
        half-closed after its 1001: it stays open to read the client's answer (`drain`)."""
        tunnel = self.tunnel
        if not (tunnel.half_close and self.state is STOPPED and self is tunnel.upstream_half):
            self.peer.close()

    def eof_received(self) -> bool:
        self._end_peer()
        return False

    def pause_writing(self) -> None:
        self.peer.pause_reading()

    def resume_writing(self) -> None:
        if not (self.tunnel.held and self is self.tunnel.client_half):
            self.peer.resume_reading()  # (a held tunnel reads its backend again only at drain)

    def connection_lost(self, exc: Exception | None) -> None:
        self._end_peer()
        self.tunnel.half_lost()


class _StreamHalf(_Half):
    """A half whose reads arrive as `bytes` (`data_received`)."""

    __slots__ = ()


class _BufferedHalf(_Half):
    """A half whose reads go into the tunnels' shared `ReadBuffer`."""

    __slots__ = ()

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.tunnel.registry.reads.view

    def buffer_updated(self, nbytes: int) -> None:
        reads = self.tunnel.registry.reads
        self.data_received(reads.view[:nbytes])
        if self.peer.get_write_buffer_size():
            reads.renew()  # the peer's transport still holds a view of this read


class Tunnel:
    """Two relayed sockets and what the session log line needs."""

    __slots__ = (
        "backend",
        "client_half",
        "client_ip",
        "close_code",
        "closed_by",
        "closing_since",
        "draining",
        "half_close",
        "held",
        "idle_mark",
        "idle_since",
        "idle_timeout",
        "listener",
        "lost",
        "registry",
        "server",
        "started",
        "upstream_half",
    )

    def __init__(
        self,
        registry: Tunnels,
        client: asyncio.Transport,
        upstream: asyncio.Transport,
        *,
        backend: str,
        server: Server,
        client_ip: str,
        listener: Listener,
        idle_timeout: float = 0.0,
    ) -> None:
        self.registry = registry
        self.backend = backend
        self.server = server
        self.client_ip = client_ip
        self.listener = listener
        self.started = time.monotonic()
        self.close_code: int | None = None  # of the first close frame seen
        self.closed_by: str | None = None  # who sent it
        self.draining = False
        self.half_close = False
        self.held = False  # nothing more to the client until drain (`hold`)
        self.lost = 0
        self.idle_mark = -1
        self.idle_since = 0.0
        self.idle_timeout = idle_timeout  # 0: never idle
        self.closing_since: float | None = None  # when an idle close began
        self.client_half: _Half = _StreamHalf(self, client, upstream, to_server=True)
        self.upstream_half: _Half = _StreamHalf(self, upstream, client, to_server=False)
        client.set_protocol(self.client_half)
        upstream.set_protocol(self.upstream_half)

    @property
    def bytes_in(self) -> int:
        """From the client to the backend."""
        return self.client_half.nbytes

    @property
    def bytes_out(self) -> int:
        """From the backend to the client."""
        return self.upstream_half.nbytes

    @property
    def buffered(self) -> bool:
        """Whether both directions read into the shared buffer (after a large read each)."""
        return isinstance(self.client_half, _BufferedHalf) and isinstance(
            self.upstream_half, _BufferedHalf
        )

    def replace_half(self, old: _Half, new: _Half) -> None:
        if old is self.client_half:
            self.client_half = new
        else:
            self.upstream_half = new

    def half_lost(self) -> None:
        self.lost += 1
        if self.lost == 2:
            self.registry.ended(self)

    def first_close(self, half: _Half) -> None:
        self.close_code = half.frames.close_code
        self.closed_by = "client" if half is self.client_half else "backend"

    def drain(self, half_close: bool = False) -> None:
        """Close the session the WebSocket way: 1001 to both ends, each at a frame boundary.

        `half_close`, for an address that left this node: the client gets a FIN right
        behind its 1001, and its socket stays open, read, until the client's close frame or
        FIN, or `expire`. Its answer reaches this node only if the address comes back (a
        move back, a move called off); a socket closed before would answer it with a reset.
        """
        self.draining = True
        self.half_close = half_close and self.client_half.transport.can_write_eof()
        self.client_half.drain()
        self.upstream_half.drain()
        self.release()  # (after the 1001: what the backend sent meanwhile is read and dropped)
        self.settle()

    def hold(self) -> None:
        """Send the client nothing more until `drain` or `release`: the backend is not read."""
        if not self.held:
            self.held = True
            self.upstream_half.transport.pause_reading()

    def release(self) -> None:
        if self.held:
            self.held = False
            self.upstream_half.transport.resume_reading()

    def settle(self) -> None:
        """While draining: once both ends have sent a close frame, close the sockets."""
        if (
            self.draining
            and self.client_half.frames.close_seen
            and self.upstream_half.frames.close_seen
        ):
            self.close()

    def close(self) -> None:
        """Close both sockets (after flushing what is buffered)."""
        self.client_half.transport.close()
        self.upstream_half.transport.close()

    def abort(self) -> None:
        self.client_half.transport.abort()
        self.upstream_half.transport.abort()

    def expire(self) -> None:
        """A drain's timeout: close each socket that has flushed (a FIN, no reset), abort
        one whose peer stopped reading."""
        for transport in (self.client_half.transport, self.upstream_half.transport):
            if transport.get_write_buffer_size():
                transport.abort()
            else:
                transport.close()


class Tunnels:
    """The open tunnels of a proxy process: counts, idle sweeping and close-all.

    `on_end` runs once per tunnel when both of its sockets are closed.
    """

    def __init__(self, on_end: Callable[[Tunnel], None]) -> None:
        self.on_end = on_end
        self.open: set[Tunnel] = set()
        self.total = 0
        self.ended_bytes_in = 0
        self.ended_bytes_out = 0
        self.reads = ReadBuffer()
        self._all_closed: asyncio.Event | None = None

    def __len__(self) -> int:
        return len(self.open)

    def add(
        self,
        client: asyncio.Transport,
        upstream: asyncio.Transport,
        *,
        backend: str,
        server: Server,
        client_ip: str,
        listener: Listener,
        idle_timeout: float = 0.0,
    ) -> Tunnel:
        tunnel = Tunnel(
            self,
            client,
            upstream,
            backend=backend,
            server=server,
            client_ip=client_ip,
            listener=listener,
            idle_timeout=idle_timeout,
        )
        self.open.add(tunnel)
        self.total += 1
        return tunnel

    def ended(self, tunnel: Tunnel) -> None:
        self.open.discard(tunnel)
        self.ended_bytes_in += tunnel.bytes_in
        self.ended_bytes_out += tunnel.bytes_out
        self.on_end(tunnel)
        if not self.open and self._all_closed is not None:
            self._all_closed.set()

    def bytes_each_way(self) -> tuple[int, int]:
        """Total (client to backend, backend to client), including open tunnels."""
        return (
            self.ended_bytes_in + sum(t.bytes_in for t in self.open),
            self.ended_bytes_out + sum(t.bytes_out for t in self.open),
        )

    def sweep_idle(self, now: float, abort_after: float) -> int:
        """Close tunnels that moved no byte for their idle timeout; returns how many began
        closing now. One whose close has not finished `abort_after` seconds later (a
        peer that stopped reading keeps the buffer full) is aborted, and not counted again.

        Counting bytes at sweep time keeps the relay's per-read work free of clocks.
        """
        closed = 0
        for tunnel in list(self.open):
            if tunnel.closing_since is not None:
                if now - tunnel.closing_since >= abort_after:
                    tunnel.abort()
                continue
            mark = tunnel.bytes_in + tunnel.bytes_out
            if mark != tunnel.idle_mark:
                tunnel.idle_mark, tunnel.idle_since = mark, now
                continue
            if 0 < tunnel.idle_timeout <= now - tunnel.idle_since:
                tunnel.close()
                tunnel.closing_since = now
                closed += 1
        return closed

    def close_all(self) -> None:
        for tunnel in list(self.open):
            tunnel.close()

    def drain_all(self) -> int:
        """Start a WebSocket close (1001 Going Away) on every open tunnel; returns how many."""
        for tunnel in list(self.open):
            tunnel.drain()
        return len(self.open)

    def abort_all(self) -> None:
        for tunnel in list(self.open):
            tunnel.abort()

    async def wait_closed(self, grace: float) -> bool:
        """Wait until no tunnel is open; False when `grace` seconds ran out first."""
        if not self.open:
            return True
        self._all_closed = asyncio.Event()
        try:
            async with asyncio.timeout(grace):
                await self._all_closed.wait()
            return True
        except TimeoutError:
            return False
        finally:
            self._all_closed = None
