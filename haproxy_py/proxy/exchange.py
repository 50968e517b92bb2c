"""The upstream half of a client's exchange: connecting, the response, and its end.

`Exchange` turns a routed request into an upstream connection (pooled or new,
the next server on a connect failure), relays the response head and body back
with backpressure (it is the `upstream.ResponseSink`), hands a 101 over to a
`relay.Tunnel`, and ends the exchange: the log line, keep-alive or close, the
proxy's own error answers with a lingering close.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

import structlog

from haproxy_py.proxy import proxyproto
from haproxy_py.proxy.addresshold import unread
from haproxy_py.proxy.balancer import Server
from haproxy_py.proxy.clientstate import (
    CLOSING,
    IDLE,
    LINGER,
    LOCAL_ERRNOS,
    PAUSE_FROZEN,
    PAUSE_HELD,
    PAUSE_UPSTREAM,
    PAUSE_WAIT,
    READ,
    SEND,
    UPSTREAM,
    ClientState,
)
from haproxy_py.proxy.headers import (
    ResponseFacts,
    header_lines,
    passes_through,
    response_head,
    simple_response,
    status_reason,
)
from haproxy_py.proxy.requestcheck import Reject
from haproxy_py.proxy.upstream import CLOSED, UpstreamConnection

if TYPE_CHECKING:
    from haproxy_py.proxy.runtime import Backend

log = structlog.get_logger(__name__)


class Exchange(ClientState):
    """The response side of `frontend.ClientConnection`."""

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
            self._arm(self.proxy.runtime.timeouts.send or LINGER, CLOSING)
        else:
            self._stop_timer()

    def freeze(self) -> None:
        """Its address is held (`addresshold`): start no next request (the one in flight is
        answered; what arrives waits in `held`, reading paused), so nothing new can be in
        flight when the address leaves. The drain then ends it (`leave`): its client, told
        only then, reconnects to the new owner."""
        if not self.closed and not self.frozen and (not self.in_exchange or self.request_done):
            self.frozen = True
            if self.held is None:
                self.held = []
            self._pause(PAUSE_FROZEN)

    def _keep_frozen(self) -> None:
        """uvloop starts reading after `connection_made`, whatever that paused."""
        if self.frozen and not self.closed:
            self.transport.pause_reading()

    def thaw(self) -> None:
        """The address stayed (no drain came): serve again, the waiting request first."""
        if self.frozen and not self.closed:
            self.frozen = False
            self._resume(PAUSE_FROZEN)
            if not self.in_exchange:
                self.loop.call_soon(self._replay)

    def leave(self) -> None:
        """Its address has moved away: close after the response in flight, at once when idle.
        A request that waited (`freeze`) is read and dropped first, after a FIN: closing
        with it unread would reset the connection (`data_received` then closes)."""
        if self.in_exchange:
            self.keep_alive = False
            return
        if self.closed or not self.frozen or not unread(self.transport):
            self._close()
            return
        self.closed = True
        self._stop_timer()
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.paused = 0
        self.transport.resume_reading()

    def _upstream_timeout(self) -> None:
        if self.backend is not None and self.server is not None:
            self.backend.passive_failure(self.server, "response timed out")
        timeout = self.timeouts.upstream_header
        self._reject(
            504,
            "the backend did not answer in time",
            f"backend {self._backend_name()} did not answer within {timeout:g}s",
        )

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
            server.release()
            self.server = None
            if timed_out or exc.errno not in LOCAL_ERRNOS:
                backend.passive_failure(server, error)
            self.tried += (server,)
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
            self._arm(self.timeouts.upstream_header, UPSTREAM)
        if self.paused & PAUSE_WAIT and not self.upgrade:
            self._resume(PAUSE_WAIT)

    def _send_up(self, data: bytes) -> None:
        if self.upstream is not None:
            self.upstream.transport.write(data)
        else:
            self.pending.append(data)
            self._pause(PAUSE_WAIT)

    # -- upstream events --------------------------------------------------------------

    def response_head(self, status: int, head: bytes, keep_alive: bool) -> None:
        runtime = self.proxy.runtime
        if status < 200:
            self._arm(self.timeouts.upstream_header, UPSTREAM)  # the final answer is still due
            if self.version == "1.1":
                self.out.append(self._rewritten(status, head, b""))
            return
        if self.response_started:
            return
        if self.on_deadline == UPSTREAM:
            self.on_deadline = 0  # `flush` arms the read deadline if the body is still due
        self.status = status
        self.response_started = True
        self.upstream_keep_alive = keep_alive
        no_body = self.method == b"HEAD" or status in (204, 304)
        if passes_through(head, no_body):
            # The common answer: the backend's head as it came, the proxy's lines added.
            tails = runtime.response_tails
            if not self.keep_alive:
                tail = tails[1]
            else:
                tail = tails[2] if self.version == "1.0" else tails[0]
            self.out.append(head[:-2] + tail)
        else:
            self.out.append(self._reframed(status, head, no_body))
        backend, server = self.backend, self.server
        if backend is not None and server is not None:
            if status >= 500 and backend.config.health.passive_5xx:
                backend.passive_failure(server, f"answered {status}")
            else:
                backend.passive_success(server)

    def _reframed(self, status: int, head: bytes, no_body: bool) -> bytes:
        """A final head with hop-by-hop lines or other framing: the proxy writes the framing."""
        facts = ResponseFacts(header_lines(head))
        framing = b""
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
        return self._rewritten(status, head, framing, facts)

    def _rewritten(
        self, status: int, head: bytes, framing: bytes, facts: ResponseFacts | None = None
    ) -> bytes:
        if facts is None:
            facts = ResponseFacts(header_lines(head))
        reason = status_reason(head)
        return response_head(status, reason, facts, via=self.proxy.runtime.via, framing=framing)

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
        if self.response_started and self.on_deadline != SEND:
            self._arm(self.timeouts.upstream_read, READ)

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
        if self.paused:
            self._resume(PAUSE_UPSTREAM)
        if self.upstream_paused:
            self.upstream_paused = False
            conn.transport.resume_reading()
        backend, server = self.backend, self.server
        assert backend is not None and server is not None
        server.release()
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
        facts = ResponseFacts(header_lines(conn.head))
        upgrade = facts.upgrade or b"websocket"
        framing = b"Connection: Upgrade\r\nUpgrade: " + upgrade + b"\r\n"
        self.transport.write(self._rewritten(101, conn.head, framing, facts))
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
        self._resume(PAUSE_UPSTREAM)
        if self.server is not None:
            self.server.release()
            self.server = None

    def _finish(self) -> None:
        """The response is written: log it, then wait for the next request or close."""
        self._log_request()
        self.in_exchange = False
        if not self.keep_alive or not self.request_done:
            self._close()
            return
        if self.on_deadline != SEND:
            self._arm(self.proxy.runtime.timeouts.http_idle, IDLE)
        if self.held:
            # Not from inside the upstream's callbacks: on the next loop turn, still holding.
            self.loop.call_soon(self._replay)
        else:
            self.held = None
            if self.paused:
                self._resume(PAUSE_HELD)

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
        self._arm(LINGER, CLOSING)

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
            "-" if self.backend is None else self.backend.name,
            None if server is None else server.address,
            (time.monotonic() - self.started) * 1000,
            self.bytes_in,
            self.bytes_out,
            self.client_ip,
            error or None,
        )
