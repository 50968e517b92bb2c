"""The client side of the proxy: one asyncio Protocol per client connection.

Requests are parsed by httptools; at the end of each head the request is
routed, a server is picked and the head goes out on a pooled keep-alive
`UpstreamConnection` (or a new one: connect failures try the next server).
Bodies stream both ways as parser events arrive, with backpressure in both
directions (a full write buffer pauses reading on the other side). Nothing is
buffered beyond one read, except a request body while its upstream connection
is still being opened (reading is paused meanwhile).

One exchange runs at a time; a pipelined request that arrives early is held
(its parser events are queued and reading pauses) until the current response
is done. Reading is paused only then, not after every request: pausing and
resuming costs system calls on the hot path. An `Upgrade: websocket` request
whose backend answers 101 turns the two sockets into a `relay.Tunnel`, and this object is dropped.

Errors the proxy makes itself are short text answers followed by a close:
404 no route, 503 no server up, 502 connect failure / bad backend, 504
upstream timeout, 400/414/431 bad requests. Proxy-made errors raised inside
parser callbacks travel as `Reject` so the parser stops at once.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

import structlog
from httptools import (
    HttpParserCallbackError,
    HttpParserError,
    HttpParserUpgrade,
    HttpRequestParser,
    parse_url,
)

from haproxy_py.proxy import proxyproto
from haproxy_py.proxy.accept import trusted
from haproxy_py.proxy.balancer import Server
from haproxy_py.proxy.headers import (
    Headers,
    RequestFacts,
    ResponseFacts,
    host_without_port,
    request_head,
    response_head,
    simple_response,
)
from haproxy_py.proxy.upstream import UpstreamConnection
from haproxy_py.proxy.wsframes import handshake_problem

if TYPE_CHECKING:
    from haproxy_py.proxy.runtime import Backend
    from haproxy_py.proxy.server import Listener, ProxyServer

log = structlog.get_logger("haproxy_py.proxy.access")

# Why reading from the client is paused (several can hold at once).
_PAUSE_UPSTREAM = 1  # the upstream write buffer is full
_PAUSE_WAIT = 2  # no upstream connection yet (body bytes wait in `pending`)
_PAUSE_HELD = 4  # a pipelined request waits for the current response

# What the connection's one deadline guards (what happens when it passes).
_IDLE = 1  # between requests: close
_HEADER = 2  # a request head is arriving: 408
_UPSTREAM = 3  # the backend owes an answer: 504
_PROXY_HEADER = 4  # a PROXY header is due: drop
# A timer that fires this close to the deadline counts as on time (uvloop has 1 ms ticks).
_TIMER_SLACK = 0.001


class Reject(Exception):
    """A request the proxy answers itself, raised from a parser callback."""

    def __init__(self, status: int, text: str) -> None:
        super().__init__(text)
        self.status = status
        self.text = text


class ClientConnection(asyncio.Protocol):
    def __init__(
        self,
        proxy: ProxyServer,
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
        self._reset_request()

    def _reset_request(self) -> None:
        self.url = b""
        self.headers: Headers = []
        self.header_bytes = 0
        self.method = b""
        self.version = "1.1"
        self.keep_alive = True
        self.upgrade = False
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
        self._arm(self.proxy.runtime.timeouts.http_idle, _IDLE)
        return buffer[result.length :]

    def _use_proxy_header(self, header: proxyproto.ProxyHeader) -> None:
        if header.source is not None and header.destination is not None:
            self.client_ip = header.source[0]
            self.peer, self.local = header.source, header.destination

    def _drop(self, reason: str) -> None:
        """Close without an answer: a peer that does not speak PROXY protocol gets no HTTP."""
        log.warning("connection dropped", reason=reason, peer=self.client_ip)
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

    def _bad_request(self, text: str) -> None:
        """Garbage after a whole request waits for its response, as a pipelined request would."""
        if self.held is None and self._must_hold():
            self.held = []
            self._pause(_PAUSE_HELD)
        if self.held is not None:
            self.held.append((self._reject, (400, text)))
        else:
            self._reject(400, text)

    def _callback_failed(self, cause: BaseException | None) -> None:
        if isinstance(cause, Reject):
            self._reject(cause.status, cause.text)
        else:
            log.error("request handling failed", exc_info=cause, client=self.client_ip)
            self._reject(500, "internal proxy error")

    def eof_received(self) -> bool:
        # A client that half-closes after a whole request still gets its response.
        if not self.in_exchange:
            return False
        if not self.request_done:
            self._reject(400, "client closed before sending the whole request")
            return True
        self.keep_alive = False
        return True

    def pause_writing(self) -> None:
        if self.upstream is not None and not self.upstream_paused:
            self.upstream_paused = True
            self.upstream.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.upstream is not None and self.upstream_paused:
            self.upstream_paused = False
            self.upstream.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._stop_timer()
        self.listener.active -= 1
        self.listener.forget(self)
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
        if not what or self.closed:
            return
        if self.deadline > self.loop.time() + _TIMER_SLACK:
            self._start_timer(self.deadline)
            return
        self.on_deadline = 0
        if what == _IDLE:
            self.transport.close()
        elif what == _HEADER:
            self._reject(408, "request headers took too long")
        elif what == _UPSTREAM:
            self._upstream_timeout()
        else:
            self._drop("no complete PROXY header in time")

    def _upstream_timeout(self) -> None:
        if self.backend is not None and self.server is not None:
            self.backend.passive_failure(self.server, "response timed out")
        timeout = self.proxy.runtime.timeouts.upstream_header
        self._reject(504, f"backend {self._backend_name()} did not answer within {timeout:g}s")

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
        assert self.facts is not None
        if self.facts.chunked:
            self._send_up(b"%x\r\n%b\r\n" % (len(body), body))
        else:
            self._send_up(body)

    def on_message_complete(self) -> None:
        if self.held is not None:
            self.held.append((self.on_message_complete, ()))
            return
        if not self.in_exchange:
            return
        self.request_done = True
        assert self.facts is not None
        if self.facts.chunked and not self.upgrade:
            self._send_up(b"0\r\n\r\n")
        if self.upstream is not None and not self.response_started:
            self._arm(self.proxy.runtime.timeouts.upstream_header, _UPSTREAM)
        if self.upgrade:
            self._pause(_PAUSE_WAIT)  # until the 101 hands the sockets to the relay

    def _upgrade_data(self, data: bytes) -> None:
        if self.held is not None:
            self.held.append((self._upgrade_data, (data,)))
        elif data and self.upgrade and self.in_exchange:
            self._send_up(data)

    # -- the exchange -----------------------------------------------------------------

    def _request_head(self, method: bytes, version: str, keep_alive: bool, upgrade: bool) -> None:
        self._disarm()
        self.method = method
        self.version = version
        self.keep_alive = keep_alive
        self.in_exchange = True
        runtime = self.proxy.runtime
        facts = self.facts = RequestFacts(self.headers)
        if method == b"CONNECT":
            raise Reject(405, "CONNECT is not supported by this proxy")
        if facts.chunked and version == "1.0":
            # RFC 9112 §6.1: such framing is faulty; two hops could read the body differently.
            raise Reject(400, "Transfer-Encoding in an HTTP/1.0 request")
        target = self.url
        host = None
        if facts.host is not None:
            if facts.host != self.host_seen:  # keep-alive clients repeat it: decode once
                self.host_seen, self.host_name = facts.host, host_without_port(facts.host)
            host = self.host_name
        route_path = target
        if target == b"*" and method == b"OPTIONS":
            route_path = b"/"  # asks about the server as a whole: forwarded as it is
        elif not target.startswith(b"/"):
            try:
                parsed = parse_url(target)  # absolute form: its host wins over Host
            except HttpParserError:
                raise Reject(400, "bad request target") from None
            target = route_path = (parsed.path or b"/") + (
                b"?" + parsed.query if parsed.query else b""
            )
            if parsed.host:
                host = parsed.host.decode("latin-1").lower()
        self.url = target
        if upgrade:
            # Only WebSocket is tunnelled; another Upgrade is served as a plain request.
            if facts.upgrade is not None and b"websocket" in facts.upgrade.lower():
                self.upgrade = True
                problem = handshake_problem(method, version, self.headers)
                if problem is not None:
                    raise Reject(400, problem)
            self.keep_alive = False
        backend_name = runtime.router.match(host, route_path)
        if backend_name is None:
            raise Reject(404, "no route for this host and path")
        backend = self.backend = runtime.backends[backend_name]
        self.hash_key = backend.hash_key(self.headers, facts, self.client_ip)
        self.retryable = not facts.chunked and facts.content_length in (None, b"0")
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
            client_ip=self.client_ip,
            proto=b"http" if self.listener.tls is None else b"https",
            default_host=server.host_header,
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
            self._fail(502, f"could not connect to any server of backend {backend.name}")
        elif any(s.up for s in backend.servers):
            self._fail(503, f"every server of backend {backend.name} is at its connection limit")
        else:
            self._fail(503, f"no server of backend {backend.name} is up")

    def _fail(self, status: int, text: str) -> None:
        if self.in_parser:
            raise Reject(status, text)
        self._reject(status, text)

    async def _connect(self, backend: Backend, server: Server) -> None:
        try:
            await self._connect_to(backend, server)
        except Exception:  # a bug here must still answer the client, not leak the task's error
            log.exception("connecting upstream failed", backend=backend.name)
            self._reject(502, "internal proxy error while connecting")

    async def _connect_to(self, backend: Backend, server: Server) -> None:
        """Open a new upstream connection; on failure go on to the next server (or answer)."""
        timeout = self.proxy.runtime.timeouts.connect or None
        try:
            async with asyncio.timeout(timeout):
                _, conn = await self.loop.create_connection(
                    lambda: UpstreamConnection(backend, server),
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
            backend.passive_failure(server, error)
            self.tried.append(server)
            if len(self.tried) > backend.config.retries:
                status = 504 if timed_out else 502
                self._reject(status, f"backend {backend.name}: {server.address}: {error}")
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
            self._arm(self.proxy.runtime.timeouts.upstream_header, _UPSTREAM)
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
            self._disarm()
            if self.version == "1.1":
                self.out.append(
                    response_head(status, reason, ResponseFacts(headers), via=via, framing=b"")
                )
            return
        if self.response_started:
            return
        self._disarm()
        facts = ResponseFacts(headers)
        self.status = status
        self.response_started = True
        self.upstream_keep_alive = keep_alive
        framing = b""
        if facts.content_length is None and self.method != b"HEAD" and status not in (204, 304):
            self.until_close = not facts.chunked
            if self.version == "1.1":
                self.chunked_out = True
                framing = b"Transfer-Encoding: chunked\r\n"
            else:
                self.keep_alive = False
        if not self.keep_alive:
            framing += b"Connection: close\r\n"
        elif self.version == "1.0":
            framing += b"Connection: keep-alive\r\n"
        backend, server = self.backend, self.server
        if backend is not None and server is not None:
            if status >= 500:
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
        """Write what the last upstream read produced in one call (head and body together)."""
        out = self.out
        if out:
            self.transport.write(out[0] if len(out) == 1 else b"".join(out))
            out.clear()

    def response_complete(self, conn: UpstreamConnection) -> None:
        if self.chunked_out:
            self.out.append(b"0\r\n\r\n")
        self.flush()
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
        if self.upstream_keep_alive and self.request_done and not self.until_close:
            backend.release(server, conn)
        else:
            conn.transport.close()
        self._finish()

    def upstream_failed(self, conn: UpstreamConnection, error: str) -> None:
        """The backend closed or sent garbage before the exchange ended."""
        self.flush()
        if self.upstream is not conn:
            return
        conn.client = None
        if not conn.transport.is_closing():
            conn.transport.close()
        self.upstream = None
        if self.response_started and self.until_close and error == "backend closed the connection":
            self.response_complete(conn)  # the close was the end of the body
            return
        backend, server = self.backend, self.server
        assert backend is not None and server is not None
        if not self.response_started and conn.reused and self.retryable and not self.retried:
            # A pooled connection the backend had just closed: try once more on a fresh one.
            self.retried = True
            self.connect_task = self.loop.create_task(self._connect(backend, server))
            return
        backend.passive_failure(server, error)
        self._reject(502, f"backend {backend.name}: {server.address}: {error}")

    def upstream_upgraded(self, conn: UpstreamConnection, tail: bytes) -> None:
        """The backend said 101: hand both sockets to a tunnel and let go of them."""
        self._stop_timer()
        backend, server = self.backend, self.server
        assert backend is not None and server is not None
        if not self.upgrade:
            conn.transport.close()
            self.upstream = None
            self._reject(502, f"backend {backend.name}: switched protocols unasked")
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
        self.transport.write(head + tail if tail else head)
        self.proxy.stats.responses[1] += 1
        self.proxy.tunnels.add(
            self.transport,
            conn.transport,
            backend=backend.name,
            server=server,
            client_ip=self.client_ip,
            listener=self.listener,
        )
        conn.detach()
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
            self.closed = True
            self.transport.close()
            return
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
            self._reject(exc.status, exc.text)
        finally:
            self.in_parser = False

    def _reject(self, status: int, text: str) -> None:
        """Answer with a proxy-made error (if no response has begun) and close."""
        if self.closed:
            return
        self._abandon_upstream()
        self.flush()
        if self.response_started:
            self.transport.abort()
        else:
            self.status = status
            self.transport.write(
                simple_response(status, text, via=self.proxy.runtime.via, close=True)
            )
        self._log_request(error=text)
        self.in_exchange = False
        self.closed = True
        self._stop_timer()
        self.transport.close()

    def _backend_name(self) -> str:
        return "-" if self.backend is None else self.backend.name

    def _log_request(self, error: str | None = None) -> None:
        stats = self.proxy.stats
        stats.responses[min(self.status // 100, 5)] += 1
        stats.http_bytes_in += self.bytes_in
        stats.http_bytes_out += self.bytes_out
        if not self.proxy.runtime.access_log:
            return
        server = self.picked
        log.info(
            "http",
            method=self.method.decode("latin-1"),
            path=self.url[:512].decode("latin-1"),
            status=self.status,
            backend=self._backend_name(),
            server=None if server is None else server.address,
            duration_ms=round((time.monotonic() - self.started) * 1000, 2),
            bytes_in=self.bytes_in,
            bytes_out=self.bytes_out,
            client=self.client_ip,
            **({"error": error} if error else {}),
        )
