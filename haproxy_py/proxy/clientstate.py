"""What a client connection holds, why its reading is paused, and its one deadline.

`ClientState` is the base of `frontend.ClientConnection` (through
`exchange.Exchange`): the per-connection and per-request fields, the
reading-pause bits and the lazy deadline timer. The methods the timer and the
exchange need from the request side are declared here and implemented there.
"""

from __future__ import annotations

import asyncio
import errno
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from httptools import (
    HttpRequestParser,
)

from haproxy_py.proxy import proxyproto
from haproxy_py.proxy.balancer import Server
from haproxy_py.proxy.config import RouteConfig, Timeouts
from haproxy_py.proxy.headers import (
    Headers,
    RequestFacts,
)
from haproxy_py.proxy.upstream import UpstreamConnection

if TYPE_CHECKING:
    from haproxy_py.proxy.accesslog import AccessLog
    from haproxy_py.proxy.addresshold import HeldAddresses
    from haproxy_py.proxy.iplimits import IpLimiter
    from haproxy_py.proxy.listeners import Listener
    from haproxy_py.proxy.relay import Tunnels
    from haproxy_py.proxy.report import Stats
    from haproxy_py.proxy.runtime import Backend, Runtime

# Why reading from the client is paused (several can hold at once).
PAUSE_UPSTREAM = 1  # the upstream write buffer is full
PAUSE_WAIT = 2  # no upstream connection yet (body bytes wait in `pending`)
PAUSE_HELD = 4  # a pipelined request waits for the current response
PAUSE_FROZEN = 8  # its address is held (`addresshold`): no next request until the drain

# What the connection's one deadline guards (what happens when it passes).
IDLE = 1  # between requests: close
HEADER = 2  # a request head is arriving: 408
UPSTREAM = 3  # the backend owes a response head: 504
PROXY_HEADER = 4  # a PROXY header is due: drop
BODY = 5  # the client owes more of its request body: 408 (abort once answering)
READ = 6  # the backend owes more of its response body: abort
SEND = 7  # the client stopped reading what it is sent: abort
CLOSING = 8  # closed, but the write buffer would not flush: abort
# A timer that fires this close to the deadline counts as on time (uvloop has 1 ms ticks).
TIMER_SLACK = 0.001
# How long a proxy-made error's lingering close reads (and drops) what the client still
# sends (nginx lingering_timeout), so its answer is not reset away under it.
LINGER = 5.0
# Local connect errors: this host ran out of something, the server is not at fault.
LOCAL_ERRNOS = frozenset(
    {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM, errno.EADDRNOTAVAIL}
)


# The fields a request's head sets, up to its routing (`frontend._request_head`), in the
# order `ClientState.routed` reads them: what a repeated request takes again without being
# parsed (`ClientState.set_routed`).
Routed = tuple[
    bytes,  # method
    str,  # version
    bool,  # keep_alive
    bool,  # in_exchange
    Headers,  # headers
    RequestFacts | None,  # facts
    bool,  # upgrade
    bool,  # carried_upgrade
    bytes,  # host_header
    bytes,  # url
    RouteConfig | None,  # route
    Timeouts,  # timeouts
    "Backend | None",  # backend (its module imports this one)
    bytes | None,  # hash_key
    bool,  # retryable
]


class ProxyContext(Protocol):
    """What a client connection uses of the proxy it belongs to (`server.ProxyServer`)."""

    loop: asyncio.AbstractEventLoop
    runtime: Runtime  # the config generation new requests use
    stats: Stats
    access_log: AccessLog
    tunnels: Tunnels
    ip_limits: IpLimiter
    draining: bool
    held: HeldAddresses  # addresses about to leave this node (`addresshold`): empty but for a move

    def holds(self, transport: asyncio.BaseTransport) -> bool:
        """Whether the connection came in on an address held now."""

    def dropped(self, reason: str, peer: str) -> None:
        """Count (and now and then log) a connection dropped before HTTP."""


class ClientState(asyncio.Protocol):
    """A client connection's fields, reading pauses and deadline (see the module doc)."""

    # The fields of the current request (`_reset_request` sets their defaults).
    headers: Headers
    header_room: int  # bytes of header lines left
    url: bytes
    method: bytes
    version: str
    keep_alive: bool
    upgrade: bool  # a WebSocket handshake
    carried_upgrade: bool  # any Upgrade: its upstream connection is never pooled
    early: list[bytes] | None  # client bytes after a handshake, until the 101
    host_header: bytes  # the Host the backend gets ("" : the server's address)
    route: RouteConfig | None
    in_exchange: bool
    backend: Backend | None
    server: Server | None  # while it counts this exchange as active
    picked: Server | None  # the last server tried, for the log line
    tried: tuple[Server, ...]
    hash_key: bytes | None
    facts: RequestFacts | None
    head: bytes
    upstream: UpstreamConnection | None
    upstream_paused: bool
    connect_task: asyncio.Task[None] | None
    request_done: bool
    retryable: bool
    retried: bool
    response_started: bool
    upstream_keep_alive: bool
    chunked_out: bool
    until_close: bool
    status: int
    started: float
    bytes_in: int
    bytes_out: int

    def __init__(
        self,
        proxy: ProxyContext,
        listener: Listener,
        preread: proxyproto.ProxyHeader | None = None,
    ) -> None:
        self.preread = preread  # a PROXY header read before the TLS handshake
        self.proxy = proxy
        self.listener = listener
        self.loop = proxy.loop
        self.transport: asyncio.Transport
        self.client_ip = "-"
        self.peer: tuple[str, int] = ("0.0.0.0", 0)  # the client, as a PROXY header would say
        self.local: tuple[str, int] = ("0.0.0.0", 0)
        self.proxy_header: bytes | None = None  # the start of a PROXY header still awaited
        self.parser: HttpRequestParser | None = HttpRequestParser(self)
        self.timer: asyncio.TimerHandle | None = None
        self.timer_at = math.inf  # when `timer` fires
        self.deadline = 0.0
        self.on_deadline = 0  # what `deadline` guards; 0: nothing
        self.paused = 0
        self.in_parser = False
        self.held: list[tuple[Callable[..., None], tuple[Any, ...]]] | None = None
        self.host_seen = b""  # the last Host header and its routing name
        self.host_name = ""
        self.closed = False
        self.frozen = False  # its address is held: no next request is read (`PAUSE_FROZEN`)
        # The timeouts of the current request's route (the node's until one is routed).
        self.timeouts: Timeouts = proxy.runtime.timeouts
        self.counted_ip: str | None = None  # the address the per-IP limits count this under
        self.keep_forwarded_for = False  # the client is a trusted proxy: append to its XFF
        self.reading_head = True  # between a message's end and the next head's end
        self.head_bytes = 0  # bytes of reads that ended inside the current head
        self.head_limit = proxy.runtime.head_limit
        # A keep-alive client mostly repeats its headers: the last request's facts and head
        # to the backend, reused while the headers (and the config generation) are the same.
        self.last_headers: Headers | None = None
        self.last_facts: tuple[Runtime, RequestFacts] | None = None
        self.last_head: tuple[tuple[object, ...], bytes] | None = None
        # The last request when it came alone in one read, bodyless and kept alive, and
        # the fields its head set (`routed`): the same bytes again, under the same config
        # generation, take them without being parsed and routed again.
        self.repeat = b""
        self.repeat_fields: tuple[Runtime, Routed] | None = None
        # Written out (or sent up) and emptied within each request: kept for the connection.
        self.pending: list[bytes] = []  # body bytes waiting for an upstream connection
        self.out: list[bytes] = []  # what the last upstream read produced for the client
        self._reset_request()

    def _reset_request(self) -> None:
        """Every per-request field back to its default (a keep-alive connection does this
        once per request)."""
        self.headers = []
        self.header_room = self.proxy.runtime.limits.max_header_size
        self.url = b""
        self.method = b""
        self.version = "1.1"
        self.keep_alive = True
        self.upgrade = False
        self.carried_upgrade = False
        self.early = None
        self.host_header = b""
        self.route = None
        self.in_exchange = False
        self.backend = None
        self.server = None
        self.picked = None
        self.tried = ()
        self.hash_key = None
        self.facts = None
        self.head = b""
        self.upstream = None
        self.upstream_paused = False
        self.connect_task = None
        self.request_done = False
        self.retryable = False
        self.retried = False
        self.response_started = False
        self.upstream_keep_alive = False
        self.chunked_out = False
        self.until_close = False
        self.status = 0
        self.started = 0.0
        self.bytes_in = 0
        self.bytes_out = 0

    def routed(self) -> Routed:
        """The fields this request's head set (`Routed`)."""
        return (
            self.method,
            self.version,
            self.keep_alive,
            self.in_exchange,
            self.headers,
            self.facts,
            self.upgrade,
            self.carried_upgrade,
            self.host_header,
            self.url,
            self.route,
            self.timeouts,
            self.backend,
            self.hash_key,
            self.retryable,
        )

    def set_routed(self, fields: Routed) -> None:
        """Take again the fields an earlier request's head set (`routed`)."""
        (
            self.method,
            self.version,
            self.keep_alive,
            self.in_exchange,
            self.headers,
            self.facts,
            self.upgrade,
            self.carried_upgrade,
            self.host_header,
            self.url,
            self.route,
            self.timeouts,
            self.backend,
            self.hash_key,
            self.retryable,
        ) = fields

    # -- reading-pause bookkeeping ----------------------------------------------------

    def _pause(self, reason: int) -> None:
        if not self.paused and not self.closed:
            self.transport.pause_reading()
        self.paused |= reason

    def _resume(self, reason: int) -> None:
        if self.paused & reason:
            self.paused &= ~reason
            if not self.paused and not self.closed:
                self.transport.resume_reading()

    def pause_for_upstream(self) -> None:
        self._pause(PAUSE_UPSTREAM)

    def resume_for_upstream(self) -> None:
        self._resume(PAUSE_UPSTREAM)

    # -- the deadline -----------------------------------------------------------------
    # One deadline per connection, for whichever phase it is in, behind one lazy timer:
    # moving the deadline later (every request does, several times) is two attribute
    # writes; the timer is re-armed only when it fires early or the deadline moves
    # before it. Arming and cancelling a loop timer per phase cost more than the
    # rest of a small request's bookkeeping.

    def _arm(self, delay: float, what: int) -> None:
        if delay <= 0:
            self.on_deadline = 0
            return
        deadline = self.deadline = self.loop.time() + delay
        self.on_deadline = what
        if deadline < self.timer_at:
            self._start_timer(deadline)

    def _disarm(self) -> None:
        self.on_deadline = 0

    def _start_timer(self, when: float) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.timer = self.loop.call_at(when, self._timer_fired)
        self.timer_at = when

    def _stop_timer(self) -> None:
        """Let go of the timer (it holds this object alive) when the connection ends."""
        self.on_deadline = 0
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
            self.timer_at = math.inf

    # -- implemented by the layers above ---------------------------------------------

    def _timer_fired(self) -> None:
        raise NotImplementedError

    def _dispatch(self) -> None:
        raise NotImplementedError

    def _replay(self) -> None:
        raise NotImplementedError
