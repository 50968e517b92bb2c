"""WebSocket frame boundaries in a relayed byte stream (RFC 6455 §5.2), sans-IO.

After the 101 the proxy relays bytes and never decodes messages (that halves
its CPU per message and keeps it byte-transparent). To drain, though, it must
put a close frame between two frames, never inside one. `FrameTracker`
follows one direction of the stream: it reads only frame headers and skips
payloads by arithmetic, so its cost per relayed chunk is a few integer
operations, not a copy. Control frames may sit between the fragments of a
message (§5.4), so a frame boundary is a safe place for the close.

It also notes whether a close frame has gone by, and its status code, so the
proxy neither sends a second close after the peer's own nor loses the code
for the session's log line.
"""

from __future__ import annotations

import base64
import os
import struct
from typing import Final

GOING_AWAY: Final = 1001
OPCODE_CLOSE: Final = 0x8
_MAX_CONTROL_PAYLOAD: Final = 125
# The longest header: 2 bytes, a 64-bit length, a mask key, and the close frame's status code.
_MAX_HEAD: Final = 2 + 8 + 4 + 2


class FrameTracker:
    """Where the frame boundaries are in one direction of a WebSocket connection.

    Feed it every chunk relayed in that direction, in order. The first two
    payload bytes of a close frame are read together with its header (they
    hold the status code), so a close frame is "inside its header" until they
    have arrived.
    """

    __slots__ = ("_head", "_remaining", "close_code", "close_seen")

    def __init__(self) -> None:
        self._remaining = 0  # payload bytes of the current frame still to come
        self._head = b""  # the start of a header split across chunks
        self.close_seen = False
        self.close_code: int | None = None

    @property
    def at_boundary(self) -> bool:
        """True when everything fed so far ends exactly at the end of a frame (or is nothing)."""
        return self._remaining == 0 and not self._head

    def feed(self, data: bytes | memoryview) -> None:
        """Account for one relayed chunk."""
        remaining = self._remaining
        if remaining >= len(data):
            # The hot case for large messages: the chunk is all payload.
            self._remaining = remaining - len(data)
            return
        self._scan(data, False)

    def feed_to_boundary(self, data: bytes | memoryview) -> int:
        """Account for `data` only up to the next frame boundary; return how many bytes that is.

        The caller relays `data[:n]`; if `at_boundary` is then true, it may
        write its own frame and the rest of `data` belongs after it. At a
        boundary already, this returns 0.
        """
        if self._remaining == 0 and not self._head:
            return 0
        return self._scan(data, True)

    def _scan(self, data: bytes | memoryview, stop_at_boundary: bool) -> int:
        n = len(data)
        pos = 0
        while True:
            remaining = self._remaining
            if remaining:
                if remaining > n - pos:
                    self._remaining = remaining - (n - pos)
                    return n
                pos += remaining
                self._remaining = 0
                if stop_at_boundary:
                    return pos
            if pos == n:
                return n
            if self._head:
                head = self._head + data[pos : pos + _MAX_HEAD]
                taken = len(self._head)
            else:
                head = bytes(data[pos : pos + _MAX_HEAD])  # a few bytes, kept past `data`
                taken = 0
            size = self._header_size(head)
            if size > len(head):
                self._head = head
                return n
            self._head = b""
            pos += size - taken
            self._start_frame(head, size)
            if stop_at_boundary and self._remaining == 0:
                return pos

    @staticmethod
    def _header_size(head: bytes) -> int:
        """Bytes the header occupies, or more than `len(head)` when it is not all there yet."""
        if len(head) < 2:
            return 2
        second = head[1]
        length = second & 0x7F
        size = 2 + (4 if second & 0x80 else 0)
        if length == 126:
            size += 2
        elif length == 127:
            size += 8
        if head[0] & 0x0F == OPCODE_CLOSE and length >= 2:
            size += 2  # control frames carry at most 125 bytes, so `length` is the real one
        return size

    def _start_frame(self, head: bytes, size: int) -> None:
        second = head[1]
        length = second & 0x7F
        if length == 126:
            (length,) = struct.unpack_from("!H", head, 2)
        elif length == 127:
            (length,) = struct.unpack_from("!Q", head, 2)
        if head[0] & 0x0F == OPCODE_CLOSE:
            self.close_seen = True
            if length >= 2:
                code = head[size - 2] << 8 | head[size - 1]
                if second & 0x80:
                    key = head[size - 6 : size - 2]
                    code ^= key[0] << 8 | key[1]
                self.close_code = code
                length -= 2
        self._remaining = length


def close_frame(code: int = GOING_AWAY, reason: str = "") -> bytes:
    """An unmasked close frame, as a server sends it to a client."""
    payload = _close_payload(code, reason)
    return bytes((0x80 | OPCODE_CLOSE, len(payload))) + payload


def masked_close_frame(code: int = GOING_AWAY, reason: str = "", key: bytes | None = None) -> bytes:
    """A masked close frame, as a client must send it to a server (RFC 6455 §5.3).

    The key is random unless given (tests give one to get fixed bytes).
    """
    if key is None:
        key = os.urandom(4)
    payload = _close_payload(code, reason)
    masked = bytes(b ^ key[i & 3] for i, b in enumerate(payload))
    return bytes((0x80 | OPCODE_CLOSE, 0x80 | len(payload))) + key + masked


def _close_payload(code: int, reason: str) -> bytes:
    payload = struct.pack("!H", code) + reason.encode("utf-8")
    if len(payload) > _MAX_CONTROL_PAYLOAD:
        raise ValueError(f"close reason too long: {len(payload)} bytes, at most 125")
    return payload


VERSION_PROBLEM = "unsupported Sec-WebSocket-Version (this proxy speaks 13)"


def handshake_problem(
    method: bytes, version: str, headers: list[tuple[bytes, bytes]]
) -> str | None:
    """Why an Upgrade request is not a valid WebSocket opening handshake (RFC 6455 §4.2.1).

    The proxy answers such a request 400 itself instead of bothering a backend.
    """
    if method != b"GET":
        return "a WebSocket handshake must use GET"
    if version in ("0.9", "1.0"):
        return "a WebSocket handshake needs HTTP/1.1"
    keys = [v for n, v in headers if n.lower() == b"sec-websocket-key"]
    versions = [v for n, v in headers if n.lower() == b"sec-websocket-version"]
    if len(keys) != 1:
        return "a WebSocket handshake needs exactly one Sec-WebSocket-Key header"
    try:
        key = base64.b64decode(keys[0].strip(), validate=True)
    except ValueError:
        key = b""
    if len(key) != 16:
        return "Sec-WebSocket-Key must be 16 bytes in base64"
    if [v.strip() for v in versions] != [b"13"]:
        return VERSION_PROBLEM
    return None
