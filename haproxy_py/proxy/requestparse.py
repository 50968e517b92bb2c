"""The request side's parse: httptools callbacks, pipelined requests held, repeats replayed.

`RequestParse` sits between `exchange.Exchange` and `frontend.ClientConnection`.
Each parser callback either does its work or, while a pipelined request waits
for the current response, queues itself in `held` (`_replay` runs the queue
once that response is written). A keep-alive client that sends the very bytes
of its last request again (alone in one read, bodyless) skips the parser: the
fields that request's head set are taken again (`_repeat`), under the same
config generation only, since its limits and routing come from it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import structlog

from haproxy_py.proxy.clientstate import (
    BODY,
    HEADER,
    PAUSE_HELD,
    PAUSE_WAIT,
    UPSTREAM,
    Routed,
)
from haproxy_py.proxy.exchange import Exchange
from haproxy_py.proxy.requestcheck import Reject

log = structlog.get_logger(__name__)


class RequestParse(Exchange):
    """The parser callbacks of `frontend.ClientConnection` (see the module doc)."""

    def _queue(self) -> list[tuple[Callable[..., None], tuple[Any, ...]]] | None:
        """Where parser events now wait, if they must: a request pipelined behind the
        current one is held (and reading paused) from its first event on."""
        if self.held is None and self.in_exchange and self.request_done and not self.upgrade:
            self.held = []
            self._pause(PAUSE_HELD)
        return self.held

    def on_message_begin(self) -> None:
        held = self._queue()
        if held is not None:
            held.append((self._message_begin, ()))
        else:
            self._message_begin()

    def _message_begin(self) -> None:
        self._reset_request()
        self.started = time.monotonic()
        self._arm(self.proxy.runtime.timeouts.client_header, HEADER)

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
        room = self.header_room = self.header_room - len(name) - len(value) - 4
        if room < 0:
            raise Reject(431, "request header section too large")
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        parser = self.parser
        assert parser is not None
        self.reading_head = False
        method, version = parser.get_method(), parser.get_http_version()
        keep_alive, upgrade = parser.should_keep_alive(), parser.should_upgrade()
        if self.held is not None:
            self.held.append((self._request_head, (method, version, keep_alive, upgrade)))
        else:
            self._request_head(method, version, keep_alive, upgrade)

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
        if self.on_deadline == BODY:
            self._arm(self.timeouts.client_body, BODY)
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
            self._arm(self.timeouts.upstream_header, UPSTREAM)
        elif self.on_deadline == BODY:
            self._disarm()
        if self.upgrade:
            self._pause(PAUSE_WAIT)  # until the 101 hands the sockets to the relay

    def _upgrade_data(self, data: bytes) -> None:
        """Bytes after a handshake's head wait for the 101 (reading is paused meanwhile);
        after an Upgrade that is not WebSocket they are dropped with the connection."""
        if self.held is not None:
            self.held.append((self._upgrade_data, (data,)))
        elif data and self.upgrade and self.in_exchange:
            if self.early is None:
                self.early = []
            self.early.append(data)

    def _remember(self, data: bytes) -> None:
        """`data` held this one request and nothing more (a second would be held, a body
        counted): keep what its head set, for a client that sends the same bytes again."""
        facts = self.facts
        if (
            self.in_exchange
            and self.keep_alive
            and not self.carried_upgrade
            and not self.bytes_in
            and facts is not None
            and not facts.chunked
        ):
            self.repeat = data
            self.repeat_fields = (self.proxy.runtime, self.routed())

    def _repeat(self, fields: Routed) -> None:
        """The remembered request again: what its head set, without parsing and routing the
        same bytes again (its limits and checks passed, and pass again under the same config
        generation), then on to a server as any request."""
        self._reset_request()
        self.set_routed(fields)
        self.started = time.monotonic()
        self._disarm()
        self.in_parser = True
        try:
            self._dispatch()
            self.on_message_complete()
        except Exception as exc:  # as a parser callback's would be
            self._callback_failed(exc)
        finally:
            self.in_parser = False

    def _bad_request(self, text: str, status: int = 400) -> None:
        """Garbage after a whole request waits for its response, as a pipelined request would."""
        if self.closed:
            return
        held = self._queue()
        if held is not None:
            held.append((self._reject, (status, text)))
        else:
            self._reject(status, text)

    def _callback_failed(self, cause: BaseException | None) -> None:
        if isinstance(cause, Reject):
            self._reject(cause.status, cause.text, extra=cause.extra)
        else:
            log.error("request handling failed", exc_info=cause, client=self.client_ip)
            self._reject(500, "internal proxy error")

    def _replay(self) -> None:
        """Run a pipelined request's parser events that waited for the previous response."""
        events, self.held = self.held or [], None
        self._resume(PAUSE_HELD)
        self.in_parser = True
        try:
            for i, (handler, args) in enumerate(events):
                if self.closed:
                    return
                held = self._queue()
                if held is not None:
                    held.extend(events[i:])
                    return
                handler(*args)
        except Reject as exc:
            self._reject(exc.status, exc.text, extra=exc.extra)
        finally:
            self.in_parser = False

    # -- implemented by the layer above ------------------------------------------------

    def _request_head(self, method: bytes, version: str, keep_alive: bool, upgrade: bool) -> None:
        raise NotImplementedError
