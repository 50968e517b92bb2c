"""The client side of the proxy: one asyncio Protocol per client connection.

Requests are parsed by httptools; at the end of each head the request is
checked (`requestcheck`), routed, a server is picked and the head goes out on a
pooled keep-alive `UpstreamConnection` (or a new one: connect failures try the
next server). Bodies stream both ways as parser events arrive, with
backpressure in both directions (a full write buffer pauses reading on the
other side). Nothing is buffered beyond one read, except a request body while
its upstream connection is still being opened (reading is paused meanwhile).
The head is bounded while it arrives: reads that end inside a head count
against `max_header_size + max_uri_size`, so one endless header line costs
at most that plus one read.

One exchange runs at a time; a pipelined request that arrives early is held
(its parser events are queued and reading pauses) until the current response
is done. Reading is paused only then, not after every request: pausing and
resuming costs system calls on the hot path. An `Upgrade: websocket` request
whose backend answers 101 turns the two sockets into a `relay.Tunnel`, and this
object is dropped. Bytes that follow the upgrade request wait (reading paused)
until the 101 and then enter the tunnel; after any other answer they are
dropped with the connection. An upstream connection that served a request
with Upgrade is never pooled.

Every phase where a peer can stall has a deadline: the PROXY header, the
request head (408), each read of a request body (408), the response head
(504, re-armed after each 1xx), each read of a response body and a client
that stops reading (both abort), idle keep-alive. A close that cannot flush
is aborted after the send timeout.

Errors the proxy makes itself are short text answers (no backend names: those
go to the log line), then a lingering close: the write side is shut and what
the client still sends is read and dropped for a while, so the kernel does
not reset the connection under the answer. 404 no route, 503 no server up,
502 connect failure / bad backend, 504 upstream timeout, 400/413/414/426/431
/501 bad requests, 429 over a per-address limit.
"""

from __future__ import annotations

import asyncio
import errno
import math
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol, cast

import structlog
from httptools import (
    HttpParserCallbackError,
    HttpParserError,
    HttpParserUpgrade,
    HttpRequestParser,
)

from haproxy_py.proxy import proxyproto
from haproxy_py.proxy.accept import trusted
from haproxy_py.proxy.balancer import Server
from haproxy_py.proxy.config import RouteConfig, Timeouts
from haproxy_py.proxy.headers import (
    Headers,
    RequestFacts,
    ResponseFacts,
    host_without_port,
    request_head,
    response_head,
    simple_response,
    valid_host,
)
from haproxy_py.proxy.requestcheck import IDEMPOTENT, Reject, check_head, split_target
from haproxy_py.proxy.upstream import CLOSED, UpstreamConnection

if TYPE_CHECKING:
    from haproxy_py.proxy.accesslog import AccessLog
    from haproxy_py.proxy.iplimits import IpLimiter
    from haproxy_py.proxy.relay import Tunnels
    from haproxy_py.proxy.runtime import Backend, Runtime
    from haproxy_py.proxy.server import Listener
    from haproxy_py.proxy.stats import Stats

log = structlog.get_logger(__name__)

# Why reading from the client is paused (several can hold at once).
_PAUSE_UPSTREAM = 1  # the upstream write buffer is full
_PAUSE_WAIT = 2  # no upstream connection yet (body bytes wait in `pending`)
_PAUSE_HELD = 4  # a pipelined request waits for the current response

# What the connection's one deadline guards (what happens when it passes).
_IDLE = 1  # between requests: close
_HEADER = 2  # a request head is arriving: 408
_UPSTREAM = 3  # the backend owes a response head: 504
_PROXY_HEADER = 4  # a PROXY header is due: drop
_BODY = 5  # the client owes more of its request body: 408 (abort once answering)
_READ = 6  # the backend owes more of its response body: abort
_SEND = 7  # the client stopped reading what it is sent: abort
_CLOSING = 8  # closed, but the write buffer would not flush: abort
# A timer that fires this close to the deadline counts as on time (uvloop has 1 ms ticks).
_TIMER_SLACK = 0.001
# How long a proxy-made error's lingering close reads (and drops) what the client still
# sends (nginx lingering_timeout), so its answer is not reset away under it.
LINGER = 5.0
# Local connect errors: this host ran out of something, the server is not at fault.
_LOCAL_ERRNOS = frozenset(
    {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM, errno.EADDRNOTAVAIL}
)


class ProxyContext(Protocol):
    """What a client connection uses of the proxy it belongs to (`server.ProxyServer`)."""

    loop: asyncio.AbstractEventLoop
    runtime: Runtime  # the config generation new requests use
    stats: Stats
    access_log: AccessLog
    tunnels: Tunnels
    ip_limits: IpLimiter
    draining: bool

    def dropped(self, reason: str, peer: str) -> None:
        """Count (and now and then log) a connection dropped before HTTP."""


class ClientConnection(asyncio.Protocol):
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
        # The timeouts of the current request's route (the node's until one is routed).
        self.timeouts: Timeouts = proxy.runtime.timeouts
        self.counted_ip: str | None = None  # the address the per-IP limits count this under
        self.keep_forwarded_for = False  # the client is a trusted proxy: append to its XFF
        self.reading_head = True  # between a message's end and the next head's end
        self.head_bytes = 0  # bytes of reads that ended inside the current head
        self.head_limit = proxy.runtime.head_limit
        self._reset_request()

    def _reset_request(self) -> None:
        self.url = b""
        self.headers: Headers = []
        self.header_bytes = 0
        self.method = b""
        self.version = "1.1"
        self.keep_alive = True
        self.upgrade = False  # a WebSocket handshake
        self.carried_upgrade = False  # any Upgrade: its upstream connection is never pooled
        self.early: list[bytes] | None = None  # client bytes after a handshake, until the 101
        self.host_header = b""  # the Host the backend gets ("" : the server's address)
        self.route: RouteConfig | None = None
        self.in_exchange = False
        self.backend: Backend | None = None
        self.server: Server | None = None  # while it counts this exchange as active
        self.picked: Server | None = None  # the last server tried, for the log line
        self.tried: list[Server] = []
        self.hash_key: bytes | None = None
        self.facts: RequestFacts | None = None
        self.head = b""
        self.upstream: UpstreamConnection | None = None
        self.upstream_paused = False
        self.connect_task: asyncio.Task[None] | None = None
        self.pending: list[bytes] = []
        self.request_done = False
        self.retryable = False
        self.retried = False
        self.response_started = False
        self.upstream_keep_alive = False
        self.chunked_out = False
        self.until_close = False
        self.out: list[bytes] = []
        self.status = 0
        self.started = 0.0
        self.bytes_in = 0
        self.bytes_out = 0

    # -- transport events -------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple):
            self.client_ip = peer[0]
            self.peer = peer[:2]
        local = transport.get_extra_info("sockname")
        if isinstance(local, tuple):
            self.local = local[:2]
        self.started = time.monotonic()
        listener = self.listener
        listener.active += 1
        listener.connections.add(self)
        self.proxy.stats.connections_total += 1
        if listener.active > listener.config.max_connections or self.proxy.draining:
            self.proxy.stats.connections_refused += 1
            self._reject(503, "this proxy is at its connection limit or draining; retry later")
            return
        if self.preread is not None:
            self._use_proxy_header(self.preread)
        elif listener.config.proxy_protocol:
            if not trusted(self.client_ip, listener.config.trusted_proxies):
                self._drop("PROXY header not accepted from this address (trusted_proxies)")
                return
            self.proxy_header = b""
            self._arm(self.proxy.runtime.timeouts.client_header, _PROXY_HEADER)
            return
        self._client_known()

    def _client_known(self) -> None:
        """The client's address is final (after any PROXY header): apply per-address rules."""
        reason = self.proxy.ip_limits.admit(
            self.client_ip, self.loop.time(), self.proxy.runtime.limits
        )
        if reason is not None:
            self._reject(429, "too many connections from your address; retry later", reason)
            return
        self.counted_ip = self.client_ip
        networks = self.listener.config.forwarded_for_trusted
        self.keep_forwarded_for = bool(networks) and trusted(self.client_ip, networks)
        self._arm(self.proxy.runtime.timeouts.http_idle, _IDLE)

    def _proxy_header_received(self, data: bytes) -> bytes:
        """Consume the PROXY header; returns the bytes after it (empty while it is incomplete)."""
        buffer = (self.proxy_header or b"") + data
        result = proxyproto.parse(buffer)
        if isinstance(result, proxyproto.NeedMore):
            self.proxy_header = buffer
            return b""
        if isinstance(result, proxyproto.Invalid):
            self._drop(result.reason)
            return b""
        self.proxy_header = None
        self._use_proxy_header(result)
        self._client_known()
        return b"" if self.closed else buffer[result.length :]

    def _use_proxy_header(self, header: proxyproto.ProxyHeader) -> None:
        if header.source is not None and header.destination is not None:
            self.client_ip = header.source[0]
            self.peer, self.local = header.source, header.destination

    def _drop(self, reason: str) -> None:
        """Close without an answer: a peer that does not speak PROXY protocol gets no HTTP."""
        self.proxy.dropped(reason, self.client_ip)
        self.closed = True
        self._stop_timer()
        self.transport.close()

    def data_received(self, data: bytes) -> None:
        parser = self.parser
        if parser is None or self.closed:
            return
        if self.proxy_header is not None:
            data = self._proxy_header_received(data)
            if not data:
                return
        if self.upgrade and self.request_done:
            self._upgrade_data(data)  # early WebSocket bytes, before the 101
            return
        if self.reading_head:
            self.head_bytes += len(data)
        self.in_parser = True
        try:
            parser.feed_data(data)
        except HttpParserUpgrade as exc:
            self._upgrade_data(data[exc.args[0] :])
        except HttpParserCallbackError as exc:
            self._callback_failed(exc.__context__)
        except HttpParserError as exc:
            self._bad_request(f"bad request: {exc}")
        finally:
            self.in_parser = False
        if self.reading_head and self.head_bytes > self.head_limit:
            # One endless header line is never handed over by the parser: count what it read.
            self._bad_request("request header section too large", 431)

    def _bad_request(self, text: str, status: int = 400) -> None:
        """Garbage after a whole request waits for its response, as a pipelined request would."""
        if self.closed:
            return
        if self.held is None and self._must_hold():
            self.held = []
            self._pause(_PAUSE_HELD)
        if self.held is not None:
            self.held.append((self._reject, (status, text)))
        else:
            self._reject(status, text)

    def _callback_failed(self, cause: BaseException | None) -> None:
        if isinstance(cause, Reject):
            self._reject(cause.status, cause.text, extra=cause.extra)
        else:
            log.error("request handling failed", exc_info=cause, client=self.client_ip)
            self._reject(500, "internal proxy error")

    def eof_received(self) -> bool:
        # A client that half-closes after a whole request still gets its response.
        if not self.in_exchange:
            if self.closed:
                self.transport.close()  # a lingering close ends when the client's side does
            return False
        if not self.request_done:
            self._reject(400, "client closed before sending the whole request")
            return True
        self.keep_alive = False
        return True

    def pause_writing(self) -> None:
        if self.closed:
            return
        self._arm(self.timeouts.send, _SEND)  # the client must read within the send timeout
        if self.upstream is not None and not self.upstream_paused:
            self.upstream_paused = True
            self.upstream.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.closed:
            return
        if self.on_deadline == _SEND:
            if not self.in_exchange:
                self._arm(self.proxy.runtime.timeouts.http_idle, _IDLE)
            elif self.response_started:
                self._arm(self.timeouts.upstream_read, _READ)
        if self.upstream is not None and self.upstream_paused:
            self.upstream_paused = False
            self.upstream.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._stop_timer()
        self.listener.active -= 1
        self.listener.forget(self)
        if self.counted_ip is not None:
            self.proxy.ip_limits.release(self.counted_ip)
            self.counted_ip = None
        if self.in_exchange:
            self._abandon_upstream()
            if not self.response_started:
                self.status = 499  # client closed before the response (as NGINX logs it)
            self._log_request()
        self.parser = None

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
        self._pause(_PAUSE_UPSTREAM)

    def resume_for_upstream(self) -> None:
        self._resume(_PAUSE_UPSTREAM)

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

    def _timer_fired(self) -> None:
        self.timer = None
        self.timer_at = math.inf
        what = self.on_deadline
        if not what or (self.closed and what != _CLOSING):
            return
        if self.deadline > self.loop.time() + _TIMER_SLACK:
            self._start_timer(self.deadline)
            return
        self.on_deadline = 0
        if what == _IDLE:
            self._close()
        elif what == _HEADER:
            self._reject(408, "request headers took too long")
        elif what == _UPSTREAM:
            self._upstream_timeout()
        elif what == _BODY:
            if self.paused & (_PAUSE_UPSTREAM | _PAUSE_WAIT):
                self._arm(self.timeouts.client_body, _BODY)  # the proxy is not reading
            else:
                self._reject(408, "request body took too long")
        elif what == _READ:
            if self.upstream_paused:
                self._arm(self.timeouts.send, _SEND)
            else:
                self._give_up("backend stalled in the middle of its response")
        elif what == _SEND:
            self._give_up("client stopped reading its response")
        elif what == _CLOSING:
            self.transport.abort()
        else:
            self._drop("no complete PROXY header in time")

    def _give_up(self, error: str) -> None:
        """A peer stalled mid-exchange: abort the client connection (and the upstream one)."""
        self._abandon_upstream()
        self._log_request(error=error)
        self.in_exchange = False
        self.closed = True
        self._stop_timer()
        self.transport.abort()

    def _close(self) -> None:
        """Close once what is buffered is written; abort if the client will not take it."""
        self.closed = True
        self.transport.close()
        if self.transport.get_write_buffer_size():
            self._arm(self.proxy.runtime.timeouts.send or LINGER, _CLOSING)
        else:
            self._stop_timer()

    def _upstream_timeout(self) -> None:
        if self.backend is not None and self.server is not None:
            self.backend.passive_failure(self.server, "response timed out")
        timeout = self.timeouts.upstream_header
        self._reject(
            504,
            "the backend did not answer in time",
            f"backend {self._backend_name()} did not answer within {timeout:g}s",
        )

    # -- parser callbacks (request side) ----------------------------------------------

    # Each callback either does its work or, while a request is held, queues itself
    # (`_replay` runs the queue later, when `held` is None again).

    def _must_hold(self) -> bool:
        """Whether parser events now belong to a request pipelined behind the current one."""
        return self.in_exchange and self.request_done and not self.upgrade

    def on_message_begin(self) -> None:
        if self.in_exchange and self.held is None and self._must_hold():
            self.held = []
            self._pause(_PAUSE_HELD)
        if self.held is not None:
            self.held.append((self._message_begin, ()))
        else:
            self._message_begin()

    def _message_begin(self) -> None:
        self._reset_request()
        self.started = time.monotonic()
        self._arm(self.proxy.runtime.timeouts.client_header, _HEADER)

    def on_url(self, url: bytes) -> None:
        if self.held is not None:
            self.held.append((self.on_url, (url,)))
            return
        self.url += url
        if len(self.url) > self.proxy.runtime.limits.max_uri_size:
            raise Reject(414, "request target too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.held is not None:
            self.held.append((self.on_header, (name, value)))
            return
        self.header_bytes += len(name) + len(value) + 4
        if self.header_bytes > self.proxy.runtime.limits.max_header_size:
            raise Reject(431, "request header section too large")
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        assert self.parser is not None
        self.reading_head = False
        parser = self.parser
        args = (
            parser.get_method(),
            parser.get_http_version(),
            parser.should_keep_alive(),
            parser.should_upgrade(),
        )
        if self.held is not None:
            self.held.append((self._request_head, args))
        else:
            self._request_head(*args)

    def on_body(self, body: bytes) -> None:
        if self.held is not None:
            self.held.append((self.on_body, (body,)))
            return
        if not self.in_exchange:
            return
        self.bytes_in += len(body)
        assert self.facts is not None and self.route is not None
        if 0 < self.route.max_body_size < self.bytes_in:
            raise Reject(413, "request body too large")
        if self.on_deadline == _BODY:
            self._arm(self.timeouts.client_body, _BODY)
        if self.facts.chunked:
            self._send_up(b"%x\r\n%b\r\n" % (len(body), body))
        else:
            self._send_up(body)

    def on_message_complete(self) -> None:
        self.reading_head = True
        self.head_bytes = 0
        if self.held is not None:
            self.held.append((self.on_message_complete, ()))
            return
        if not self.in_exchange:
            return
        self.request_done = True
        assert self.facts is not None
        if self.facts.chunked:
            self._send_up(b"0\r\n\r\n")
        if self.upstream is not None and not self.response_started:
            self._arm(self.timeouts.upstream_header, _UPSTREAM)
        elif self.on_deadline == _BODY:
            self._disarm()
        if self.upgrade:
            self._pause(_PAUSE_WAIT)  # until the 101 hands the sockets to the relay

    def _upgrade_data(self, data: bytes) -> None:
        """Bytes after a handshake's head wait for the 101 (reading is paused meanwhile);
        after an Upgrade that is not WebSocket they are dropped with the connection."""
        if self.held is not None:
            self.held.append((self._upgrade_data, (data,)))
        elif data and self.upgrade and self.in_exchange:
            if self.early is None:
                self.early = []
            self.early.append(data)

    # -- the exchange -----------------------------------------------------------------

    def _request_head(self, method: bytes, version: str, keep_alive: bool, upgrade: bool) -> None:
        self._disarm()
        self.method = method
        self.version = version
        self.keep_alive = keep_alive
        self.in_exchange = True
        runtime = self.proxy.runtime
        facts = self.facts = RequestFacts(self.headers, runtime.underscores)
        if upgrade or facts.hosts != 1 or facts.chunked or facts.via or method == b"CONNECT":
            self.upgrade = check_head(method, version, upgrade, facts, self.headers, runtime.via)
        host = None
        if facts.host is not None:
            if facts.host != self.host_seen:  # keep-alive clients repeat it: check once
                if not valid_host(facts.host):
                    raise Reject(400, "invalid Host header")
                self.host_seen, self.host_name = facts.host, host_without_port(facts.host)
            host = self.host_name
            self.host_header = facts.host
        target = route_path = self.url
        if target[0] != 47 or b"#" in target:  # not "/..." (llhttp took a non-empty one)
            target, route_path, authority = split_target(target, method)
            if authority is not None:  # RFC 9112 §3.2.2: the target's authority replaces Host
                self.host_header = authority
                host = host_without_port(authority)
            self.url = target
        if upgrade or facts.upgrade is not None:
            self.carried_upgrade = True
        if upgrade:
            self.keep_alive = False
        route = self.route = runtime.router.route(host, route_path)
        if route is None:
            raise Reject(404, "no route for this host and path")
        timeouts = self.timeouts = route.timeouts or runtime.timeouts
        length = facts.content_length or 0
        if 0 < route.max_body_size < length:
            raise Reject(413, "request body too large")
        backend = self.backend = runtime.backends[route.backend]
        if backend.hashed:
            self.hash_key = backend.hash_key(self.headers, facts, self.client_ip)
        self.retryable = method in IDEMPOTENT and not facts.chunked and not length
        if facts.chunked or length:
            self._arm(timeouts.client_body, _BODY)
        self._dispatch()

    def _dispatch(self) -> None:
        """Pick a server and send the head on an idle connection, or start connecting."""
        backend = self.backend
        assert backend is not None and self.facts is not None
        server = backend.balancer.pick(self.hash_key, self.tried)
        if server is None:
            self._no_server(backend)
            return
        server.active += 1
        server.total += 1
        self.server = self.picked = server
        self.head = request_head(
            self.method,
            self.url,
            self.facts,
            host=self.host_header or server.host_header,
            client_ip=self.client_ip,
            proto=b"http" if self.listener.tls is None else b"https",
            via=self.proxy.runtime.via,
            keep_forwarded_for=self.keep_forwarded_for,
            upgrade=self.upgrade,
        )
        conn = backend.acquire(server)
        if conn is not None:
            conn.reused = True
            self._attach(conn)
        else:
            self._pause(_PAUSE_WAIT)
            self.connect_task = self.loop.create_task(self._connect(backend, server))

    def _no_server(self, backend: Backend) -> None:
        if self.tried:
            self._fail(
                502, "bad gateway", f"could not connect to any server of backend {backend.name}"
            )
        elif any(s.up for s in backend.servers):
            self._fail(
                503,
                "no server is available; retry later",
                f"every server of backend {backend.name} is at its connection limit",
            )
        else:
            self._fail(
                503,
                "no server is available; retry later",
                f"no server of backend {backend.name} is up",
            )

    def _fail(self, status: int, text: str, detail: str) -> None:
        if self.in_parser:
            self._reject(status, text, detail)
            raise Reject(status, text)  # stops the parser; the answer is already out
        self._reject(status, text, detail)

    async def _connect(self, backend: Backend, server: Server) -> None:
        try:
            await self._connect_to(backend, server)
        except Exception:  # a bug here must still answer the client, not leak the task's error
            log.exception("connecting upstream failed", backend=backend.name)
            self._reject(502, "internal proxy error while connecting")

    async def _connect_to(self, backend: Backend, server: Server) -> None:
        """Open a new upstream connection; on failure go on to the next server (or answer)."""
        timeout = self.timeouts.connect or None
        head_limit = self.proxy.runtime.head_limit
        try:
            async with asyncio.timeout(timeout):
                _, conn = await self.loop.create_connection(
                    lambda: UpstreamConnection(server, backend.forget, head_limit),
                    server.host,
                    server.port,
                    ssl=backend.ssl,
                    server_hostname=backend.server_name(server),
                )
        except (OSError, TimeoutError) as exc:
            self.connect_task = None
            timed_out = isinstance(exc, TimeoutError)
            error = (
                f"connect timed out after {timeout:g}s"
                if timed_out
                else f"connect failed: {exc.strerror or exc}"
            )
            server.active -= 1
            self.server = None
            if timed_out or exc.errno not in _LOCAL_ERRNOS:
                backend.passive_failure(server, error)
            self.tried.append(server)
            if len(self.tried) > backend.config.retries:
                status = 504 if timed_out else 502
                text = "the backend did not answer in time" if timed_out else "bad gateway"
                self._reject(status, text, f"backend {backend.name}: {server.address}: {error}")
            else:
                self._dispatch()
            return
        self.connect_task = None
        if self.closed:
            backend.release(server, conn)
        else:
            self._attach(conn)

    def _attach(self, conn: UpstreamConnection) -> None:
        self.upstream = conn
        conn.begin(self, skip_body=self.method == b"HEAD")
        assert self.backend is not None
        send_proxy = self.backend.config.send_proxy
        if send_proxy is not None and not conn.reused:
            encode = proxyproto.encode_v2 if send_proxy == "v2" else proxyproto.encode_v1
            conn.transport.write(encode(self.peer, self.local))
        if self.pending:
            conn.transport.write(b"".join((self.head, *self.pending)))
            self.pending.clear()
        else:
            conn.transport.write(self.head)
        if self.request_done:
            self._arm(self.timeouts.upstream_header, _UPSTREAM)
        if self.paused & _PAUSE_WAIT and not self.upgrade:
            self._resume(_PAUSE_WAIT)

    def _send_up(self, data: bytes) -> None:
        if self.upstream is not None:
            self.upstream.transport.write(data)
        else:
            self.pending.append(data)
            self._pause(_PAUSE_WAIT)

    # -- upstream events --------------------------------------------------------------

    def response_head(self, status: int, reason: bytes, headers: Headers, keep_alive: bool) -> None:
        via = self.proxy.runtime.via
        if status < 200:
            self._arm(self.timeouts.upstream_header, _UPSTREAM)  # the final answer is still due
            if self.version == "1.1":
                self.out.append(
                    response_head(status, reason, ResponseFacts(headers), via=via, framing=b"")
                )
            return
        if self.response_started:
            return
        if self.on_deadline == _UPSTREAM:
            self.on_deadline = 0  # `flush` arms the read deadline if the body is still due
        facts = ResponseFacts(headers)
        self.status = status
        self.response_started = True
        self.upstream_keep_alive = keep_alive
        framing = b""
        no_body = self.method == b"HEAD" or status in (204, 304)
        if no_body or (facts.delimited and not facts.chunked):
            if facts.content_length is not None and facts.codings is None:
                framing = b"Content-Length: " + facts.content_length + b"\r\n"
        else:
            # Chunked from the backend, or delimited by its close: chunked to the client.
            self.until_close = not facts.chunked
            if self.version == "1.1":
                self.chunked_out = True
                codings = b"" if facts.codings is None else facts.codings + b", "
                framing = b"Transfer-Encoding: " + codings + b"chunked\r\n"
            else:
                self.keep_alive = False
        if not self.keep_alive:
            framing += b"Connection: close\r\n"
        elif self.version == "1.0":
            framing += b"Connection: keep-alive\r\n"
        backend, server = self.backend, self.server
        if backend is not None and server is not None:
            if status >= 500 and backend.config.health.passive_5xx:
                backend.passive_failure(server, f"answered {status}")
            else:
                backend.passive_success(server)
        self.out.append(response_head(status, reason, facts, via=via, framing=framing))

    def response_body(self, body: bytes) -> None:
        self.bytes_out += len(body)
        if self.chunked_out:
            self.out.append(b"%x\r\n%b\r\n" % (len(body), body))
        else:
            self.out.append(body)

    def flush(self) -> None:
        """An upstream read ended inside the response: write what it produced, and give the
        backend `upstream_read` for its next read (a response that ends within one read,
        the common case, never reads the clock for this)."""
        self._write_out()
        if self.response_started and self.on_deadline != _SEND:
            self._arm(self.timeouts.upstream_read, _READ)

    def _write_out(self) -> None:
        """Write what the last upstream read produced in one call (head and body together)."""
        out = self.out
        if out:
            self.transport.write(out[0] if len(out) == 1 else b"".join(out))
            out.clear()

    def response_complete(self, conn: UpstreamConnection) -> None:
        if self.chunked_out:
            self.out.append(b"0\r\n\r\n")
        self._write_out()
        self.upstream = None
        conn.client = None
        self._resume(_PAUSE_UPSTREAM)
        if self.upstream_paused:
            self.upstream_paused = False
            conn.transport.resume_reading()
        backend, server = self.backend, self.server
        assert backend is not None and server is not None
        server.active -= 1
        self.server = None
        if (
            self.upstream_keep_alive
            and self.request_done
            and not self.until_close
            and not self.carried_upgrade
        ):
            backend.release(server, conn)
        else:
            conn.transport.close()
        self._finish()

    def upstream_failed(self, conn: UpstreamConnection, error: str) -> None:
        """The backend closed or sent garbage before the exchange ended."""
        self._write_out()
        if self.upstream is not conn:
            return
        conn.client = None
        if not conn.transport.is_closing():
            conn.transport.close()
        self.upstream = None
        if self.response_started and self.until_close and error == CLOSED:
            self.response_complete(conn)  # the close was the end of the body (a reset is not)
            return
        backend, server = self.backend, self.server
        assert backend is not None and server is not None
        if conn.reused and not conn.received and self.retryable and not self.retried:
            # A pooled connection the backend closed before answering a byte: an idempotent
            # request may go once more, on a fresh connection (RFC 9110 §9.2.2).
            self.retried = True
            self.connect_task = self.loop.create_task(self._connect(backend, server))
            return
        if not conn.received:
            backend.passive_failure(server, error)  # a transport failure, not a bad answer
        self._reject(502, "bad gateway", f"backend {backend.name}: {server.address}: {error}")

    def upstream_upgraded(self, conn: UpstreamConnection, tail: bytes) -> None:
        """The backend said 101: hand both sockets to a tunnel and let go of them."""
        self._stop_timer()
        backend, server = self.backend, self.server
        assert backend is not None and server is not None
        if not self.upgrade:
            conn.transport.close()
            self.upstream = None
            self._reject(502, "bad gateway", f"backend {backend.name}: switched protocols unasked")
            return
        facts = ResponseFacts(conn.headers)
        upgrade = facts.upgrade or b"websocket"
        head = response_head(
            101,
            conn.reason,
            facts,
            via=self.proxy.runtime.via,
            framing=b"Connection: Upgrade\r\nUpgrade: " + upgrade + b"\r\n",
        )
        self.transport.write(head)
        self.proxy.stats.responses[1] += 1
        tunnel = self.proxy.tunnels.add(
            self.transport,
            conn.transport,
            backend=backend.name,
            server=server,
            client_ip=self.client_ip,
            listener=self.listener,
            idle_timeout=self.timeouts.websocket_idle,
        )
        self.counted_ip = None  # the tunnel's end releases it
        conn.detach()
        # Bytes that crossed the switch go through the frame trackers like any later ones.
        if tail:
            tunnel.upstream_half.data_received(tail)
        if self.early:
            tunnel.client_half.data_received(b"".join(self.early))
            self.early = None
        self.listener.forget(self)
        self.upstream = None
        self.server = None
        self.in_exchange = False
        self.parser = None
        self.paused = 0
        self.transport.resume_reading()

    def _abandon_upstream(self) -> None:
        if self.connect_task is not None:
            self.connect_task.cancel()
            self.connect_task = None
        conn = self.upstream
        if conn is not None:
            self.upstream = None
            conn.client = None
            conn.transport.abort()
        self._resume(_PAUSE_UPSTREAM)
        if self.server is not None:
            self.server.active -= 1
            self.server = None

    def _finish(self) -> None:
        """The response is written: log it, then wait for the next request or close."""
        self._log_request()
        self.in_exchange = False
        if not self.keep_alive or not self.request_done:
            self._close()
            return
        if self.on_deadline != _SEND:
            self._arm(self.proxy.runtime.timeouts.http_idle, _IDLE)
        if self.held:
            # Not from inside the upstream's callbacks: on the next loop turn, still holding.
            self.loop.call_soon(self._replay)
        else:
            self.held = None
            self._resume(_PAUSE_HELD)

    def _replay(self) -> None:
        """Run a pipelined request's parser events that waited for the previous response."""
        events, self.held = self.held or [], None
        self._resume(_PAUSE_HELD)
        self.in_parser = True
        try:
            for i, (handler, args) in enumerate(events):
                if self.closed:
                    return
                if self.held is None and self._must_hold():
                    self.held = []
                    self._pause(_PAUSE_HELD)
                if self.held is not None:
                    self.held.extend(events[i:])
                    return
                handler(*args)
        except Reject as exc:
            self._reject(exc.status, exc.text, extra=exc.extra)
        finally:
            self.in_parser = False

    def _reject(
        self, status: int, text: str, detail: str | None = None, *, extra: bytes = b""
    ) -> None:
        """Answer with a proxy-made error (if no response has begun), then a lingering close.

        `text` is for the client; `detail` (backend names, addresses) only for the log.
        """
        if self.closed:
            return
        self._abandon_upstream()
        self._write_out()
        self._log_request(error=detail or text, status=status)
        self.in_exchange = False
        self.closed = True
        self.early = None
        if self.response_started:
            self._stop_timer()
            self.transport.abort()
            return
        self.transport.write(
            simple_response(status, text, via=self.proxy.runtime.via, close=True, extra=extra)
        )
        if not self.transport.can_write_eof():  # TLS: close_notify, then close
            self._close()
            return
        self.transport.write_eof()
        self.paused = 0
        self.transport.resume_reading()  # read and drop what the client still sends
        self._arm(LINGER, _CLOSING)

    def _backend_name(self) -> str:
        return "-" if self.backend is None else self.backend.name

    def _log_request(self, error: str | None = None, status: int | None = None) -> None:
        if status is not None and not self.response_started:
            self.status = status
        stats = self.proxy.stats
        stats.responses[min(self.status // 100, 5)] += 1
        stats.http_bytes_in += self.bytes_in
        stats.http_bytes_out += self.bytes_out
        if not self.proxy.runtime.access_log:
            return
        server = self.picked
        self.proxy.access_log.http(
            self.method.decode("latin-1"),
            self.url[:512].decode("latin-1"),
            self.status,
            self._backend_name(),
            None if server is None else server.address,
            round((time.monotonic() - self.started) * 1000, 2),
            self.bytes_in,
            self.bytes_out,
            self.client_ip,
            error or None,
        )
