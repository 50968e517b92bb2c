"""The client side of the proxy: one asyncio Protocol per client connection.

`ClientConnection` is built in four layers, one module each: the state, the
reading pauses and the deadline timer (`clientstate.ClientState`); the upstream
half of an exchange, from connecting to the end of the response
(`exchange.Exchange`); the parser callbacks, pipelining and repeated requests
(`requestparse.RequestParse`); and here, the transport events and routing.

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
import math
import time
from typing import cast

import structlog
from httptools import (
    HttpParserCallbackError,
    HttpParserError,
    HttpParserUpgrade,
)

from haproxy_py.proxy import proxyproto
from haproxy_py.proxy.accept import trusted
from haproxy_py.proxy.clientstate import (
    BODY,
    CLOSING,
    HEADER,
    IDLE,
    PAUSE_UPSTREAM,
    PAUSE_WAIT,
    PROXY_HEADER,
    READ,
    SEND,
    TIMER_SLACK,
    UPSTREAM,
)
from haproxy_py.proxy.headers import (
    RequestFacts,
    host_without_port,
    request_head,
    valid_host,
)
from haproxy_py.proxy.requestcheck import IDEMPOTENT, Reject, check_head, split_target
from haproxy_py.proxy.requestparse import RequestParse

log = structlog.get_logger(__name__)


class ClientConnection(RequestParse):
    """One client connection: its transport events and the request side of each exchange."""

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
        if self.proxy.held and self.proxy.holds(transport):
            self.freeze()  # its request waits; the drain tells it to go to the new owner
            self.loop.call_soon(self._keep_frozen)
        if self.preread is not None:
            self._use_proxy_header(self.preread)
        elif listener.config.proxy_protocol:
            if not trusted(self.client_ip, listener.config.trusted_proxies):
                self._drop("PROXY header not accepted from this address (trusted_proxies)")
                return
            self.proxy_header = b""
            self._arm(self.proxy.runtime.timeouts.client_header, PROXY_HEADER)
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
        self._arm(self.proxy.runtime.timeouts.http_idle, IDLE)

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
            if self.frozen:  # its address moved away (`leave`): what waited is read, now go
                self.transport.close()
            return
        if self.proxy_header is not None:
            data = self._proxy_header_received(data)
            if not data:
                return
        if self.upgrade and self.request_done:
            self._upgrade_data(data)  # early WebSocket bytes, before the 101
            return
        fresh = self.reading_head and not self.head_bytes and not self.in_exchange
        if fresh and data == self.repeat and self.held is None:
            known = self.repeat_fields
            if known is not None and known[0] is self.proxy.runtime:
                self._repeat(known[1])
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
        else:
            if fresh and self.request_done and self.held is None:
                self._remember(data)
        finally:
            self.in_parser = False
        if self.reading_head and self.head_bytes > self.head_limit:
            # One endless header line is never handed over by the parser: count what it read.
            self._bad_request("request header section too large", 431)

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
        self._arm(self.timeouts.send, SEND)  # the client must read within the send timeout
        if self.upstream is not None and not self.upstream_paused:
            self.upstream_paused = True
            self.upstream.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.closed:
            return
        if self.on_deadline == SEND:
            if not self.in_exchange:
                self._arm(self.proxy.runtime.timeouts.http_idle, IDLE)
            elif self.response_started:
                self._arm(self.timeouts.upstream_read, READ)
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

    def _timer_fired(self) -> None:
        self.timer = None
        self.timer_at = math.inf
        what = self.on_deadline
        if not what or (self.closed and what != CLOSING):
            return
        if self.deadline > self.loop.time() + TIMER_SLACK:
            self._start_timer(self.deadline)
            return
        self.on_deadline = 0
        if what == IDLE:
            self._close()
        elif what == HEADER:
            self._reject(408, "request headers took too long")
        elif what == UPSTREAM:
            self._upstream_timeout()
        elif what == BODY:
            if self.paused & (PAUSE_UPSTREAM | PAUSE_WAIT):
                self._arm(self.timeouts.client_body, BODY)  # the proxy is not reading
            else:
                self._reject(408, "request body took too long")
        elif what == READ:
            if self.upstream_paused:
                self._arm(self.timeouts.send, SEND)
            else:
                self._give_up("backend stalled in the middle of its response")
        elif what == SEND:
            self._give_up("client stopped reading its response")
        elif what == CLOSING:
            self.transport.abort()
        else:
            self._drop("no complete PROXY header in time")

    # -- the exchange -----------------------------------------------------------------

    def _request_head(self, method: bytes, version: str, keep_alive: bool, upgrade: bool) -> None:
        self._disarm()
        self.method = method
        self.version = version
        self.keep_alive = keep_alive
        self.in_exchange = True
        runtime = self.proxy.runtime
        last = self.last_facts
        if last is not None and last[0] is runtime and self.headers == self.last_headers:
            facts = self.facts = last[1]
        else:
            facts = self.facts = RequestFacts(self.headers, runtime.underscores)
            self.last_headers, self.last_facts = self.headers, (runtime, facts)
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
            self._arm(timeouts.client_body, BODY)
        self._dispatch()

    def _dispatch(self) -> None:
        """Pick a server and send the head on an idle connection, or start connecting."""
        backend = self.backend
        assert backend is not None and self.facts is not None
        server = backend.balancer.pick(self.hash_key, self.tried)
        if server is None:
            self._no_server(backend)
            return
        server.acquire()
        self.server = self.picked = server
        host = self.host_header or server.host_header
        key = (self.method, self.url, host, self.facts, self.upgrade)
        last = self.last_head
        if last is not None and last[0] == key:  # the same facts: the same config generation
            self.head = last[1]
        else:
            self.head = request_head(
                self.method,
                self.url,
                self.facts,
                host=host,
                client_ip=self.client_ip,
                proto=b"http" if self.listener.tls is None else b"https",
                via=self.proxy.runtime.via,
                keep_forwarded_for=self.keep_forwarded_for,
                upgrade=self.upgrade,
            )
            self.last_head = (key, self.head)
        conn = backend.acquire(server)
        if conn is not None:
            conn.reused = True
            self._attach(conn)
        else:
            self._pause(PAUSE_WAIT)
            self.connect_task = self.loop.create_task(self._connect(backend, server))
