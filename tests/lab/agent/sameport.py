"""A WebSocket echo client on one fixed source port (plain sockets), for a reused 4-tuple.

Clients behind NAT, or any client whose ephemeral port comes round again, open a
connection with the same address and port as an earlier one; a node that served
the earlier one can still carry its conntrack entry long after its socket went.
Run in the client's namespace (`haproxy_py.lab.netns.in_netns`): `touch` connects,
checks one echo and aborts (a RST: the server's socket goes, its conntrack entry
stays); `follow` connects from the same port and sends a frame every few ms until
the connection ends, and says how it ended.
"""

from __future__ import annotations

import base64
import os
import select
import socket
import struct
import threading
import time

STEP = 0.005  # a frame this often: a packet of the client's is in flight at every instant
CLOSE = 0x8


def _connect(host: str, port: int, source_port: int) -> tuple[socket.socket, str]:
    """The upgraded connection and the node its 101's Via header names."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close: RST
    sock.bind(("", source_port))
    sock.settimeout(2.0)
    sock.connect((host, port))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        f"GET /echo HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError("the proxy closed the handshake")
        head += chunk
    lines = head.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
    if " 101 " not in lines[0] + " ":
        raise ConnectionError(f"no upgrade: {lines[0]}")
    fields = dict(line.lower().split(": ", 1) for line in lines[1:] if ": " in line)
    return sock, fields.get("via", "?").split()[-1]


def _frame(payload: bytes) -> bytes:
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return bytes([0x81, 0x80 | len(payload)]) + mask + masked


def _close_code(buffer: bytes) -> int | None:
    """The code of the first close frame in `buffer` (unmasked server frames), if complete."""
    while len(buffer) >= 2:
        opcode, length = buffer[0] & 0x0F, buffer[1] & 0x7F
        start = 2 + {126: 2, 127: 8}.get(length, 0)
        if length >= 126:
            length = int.from_bytes(buffer[2:start], "big")
        if len(buffer) < start + length:
            return None
        if opcode == CLOSE:
            return int.from_bytes(buffer[start : start + 2], "big")
        buffer = buffer[start + length :]
    return None


def touch(host: str, port: int, source_port: int) -> str:
    """Connect, get one echo, abort; the node that answered."""
    sock, via = _connect(host, port, source_port)
    try:
        sock.sendall(_frame(b"x"))
        if not sock.recv(64):
            raise ConnectionError("no echo")
    finally:
        sock.close()
    return via


def follow(
    host: str, port: int, source_port: int, seconds: float, connected: threading.Event
) -> tuple[str, str]:
    """(node, how it ended): `1001` (a close frame's code), `reset`, `eof` or `timeout`."""
    sock, via = _connect(host, port, source_port)
    connected.set()
    buffer = b""
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            try:
                sock.sendall(_frame(b"x"))
                if select.select([sock], [], [], STEP)[0]:
                    data = sock.recv(65536)
                    if not data:
                        return via, "eof"
                    buffer += data
            except (ConnectionResetError, BrokenPipeError):
                return via, "reset"
            code = _close_code(buffer)
            if code is not None:
                return via, str(code)
        return via, "timeout"
    finally:
        sock.close()
