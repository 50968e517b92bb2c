"""PROXY protocol v1 and v2 (haproxy.org/download/2.9/doc/proxy-protocol.txt), sans-IO.

A TCP-mode load balancer in front of a listener (the AWS ELB case) prepends one
header to each connection that says who the client really is. `parse` looks at
the bytes received so far and answers one of three things: more bytes are
needed, the header is complete (with its length, so the caller can hand the
rest to the HTTP parser), or the connection is not speaking the protocol and
must be closed. It never reads past the header and keeps no state, so the
caller just calls it again with the longer buffer.

`encode_v1` / `encode_v2` build the header the proxy sends to a backend
(`send_proxy`).
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass
from typing import Final

V2_SIGNATURE: Final = b"\r\n\r\n\x00\r\nQUIT\n"
V1_PREFIX: Final = b"PROXY "
# The longest v1 line the spec allows, CRLF included.
V1_MAX_LENGTH: Final = 107

_V2_HEAD = struct.Struct("!12sBBH")
_V2_INET = struct.Struct("!4s4sHH")
_V2_INET6 = struct.Struct("!16s16sHH")
_V2_VERSION = 0x20
_CMD_LOCAL = 0x0
_CMD_PROXY = 0x1
_AF_UNSPEC, _AF_INET, _AF_INET6, _AF_UNIX = 0x0, 0x1, 0x2, 0x3
_PROTO_UNSPEC, _PROTO_STREAM = 0x0, 0x1

Address = tuple[str, int]


@dataclass(frozen=True, slots=True)
class NeedMore:
    """The bytes so far are a valid beginning: wait for more."""


NEED_MORE: Final = NeedMore()


@dataclass(frozen=True, slots=True)
class Invalid:
    """Not a PROXY protocol header; the connection must be closed."""

    reason: str


@dataclass(frozen=True, slots=True)
class ProxyHeader:
    """A complete header of `length` bytes.

    `source` and `destination` are None when the sender had no addresses to
    give (v1 `UNKNOWN`, v2 `LOCAL` such as a balancer's own health check, or a
    non-IP family): then the connection's own addresses stand.
    """

    length: int
    version: int
    source: Address | None = None
    destination: Address | None = None

    @property
    def family(self) -> str | None:
        """`"tcp4"`, `"tcp6"`, or None when no address was given."""
        if self.source is None:
            return None
        return "tcp6" if ":" in self.source[0] else "tcp4"


Result = NeedMore | Invalid | ProxyHeader


def parse(data: bytes) -> Result:
    """Parse a PROXY header at the start of `data` (v1 or v2, told apart by the first byte)."""
    if data[:1] == b"\r":
        return _parse_v2(data)
    if V1_PREFIX.startswith(data[:6]):
        return _parse_v1(data)
    return Invalid("no PROXY protocol header")


def _parse_v1(data: bytes) -> Result:
    end = data.find(b"\r\n", 0, V1_MAX_LENGTH)
    if end < 0:
        if len(data) >= V1_MAX_LENGTH or b"\n" in data:
            return Invalid("PROXY v1 line not terminated by CRLF within 107 bytes")
        return NEED_MORE
    line = data[:end]
    try:
        text = line.decode("ascii")
    except UnicodeDecodeError:
        return Invalid("PROXY v1 line is not ASCII")
    fields = text.split(" ")
    length = end + 2
    if fields[1] == "UNKNOWN":
        # The spec says the rest of an UNKNOWN line is to be ignored.
        return ProxyHeader(length, 1)
    if len(fields) != 6:
        return Invalid("PROXY v1 line must have 6 fields: PROXY TCP4|TCP6 SRC DST SPORT DPORT")
    proto, src, dst, sport, dport = fields[1:]
    if proto == "TCP4":
        version: type[ipaddress.IPv4Address | ipaddress.IPv6Address] = ipaddress.IPv4Address
    elif proto == "TCP6":
        version = ipaddress.IPv6Address
    else:
        return Invalid(f"PROXY v1 protocol must be TCP4, TCP6 or UNKNOWN, got {proto[:8]!r}")
    try:
        source = (_address(version, src), _port(sport))
        destination = (_address(version, dst), _port(dport))
    except ValueError as exc:
        return Invalid(f"PROXY v1 {proto}: {exc}")
    return ProxyHeader(length, 1, source, destination)


def _address(version: type[ipaddress.IPv4Address | ipaddress.IPv6Address], text: str) -> str:
    if "%" in text:  # a scope id means nothing to the receiver
        raise ValueError(f"bad address {text[:40]!r}")
    return str(version(text))


def _port(text: str) -> int:
    # Decimal without leading zeros, as the spec requires of senders.
    if not text.isascii() or not text.isdigit() or (len(text) > 1 and text[0] == "0"):
        raise ValueError(f"bad port {text[:8]!r}")
    port = int(text)
    if port > 65535:
        raise ValueError(f"port {port} out of range")
    return port


def _parse_v2(data: bytes) -> Result:
    if len(data) < _V2_HEAD.size:
        if V2_SIGNATURE.startswith(data[:12]):
            return NEED_MORE
        return Invalid("no PROXY protocol header")
    signature, ver_cmd, fam_proto, body_length = _V2_HEAD.unpack_from(data)
    if signature != V2_SIGNATURE:
        return Invalid("no PROXY protocol header")
    if ver_cmd & 0xF0 != _V2_VERSION:
        return Invalid(f"PROXY v2 header with version {ver_cmd >> 4}")
    command = ver_cmd & 0x0F
    if command not in (_CMD_LOCAL, _CMD_PROXY):
        return Invalid(f"PROXY v2 header with unknown command {command}")
    length = _V2_HEAD.size + body_length
    if len(data) < length:
        return NEED_MORE
    if command == _CMD_LOCAL:
        return ProxyHeader(length, 2)
    family, proto = fam_proto >> 4, fam_proto & 0x0F
    if family in (_AF_UNSPEC, _AF_UNIX):
        return ProxyHeader(length, 2)
    if family not in (_AF_INET, _AF_INET6):
        return Invalid(f"PROXY v2 header with unknown address family {family}")
    if proto != _PROTO_STREAM:
        return Invalid("PROXY v2 header for a non-stream (UDP or unspecified) connection")
    layout = _V2_INET if family == _AF_INET else _V2_INET6
    if body_length < layout.size:
        return Invalid(f"PROXY v2 address block of {body_length} bytes, need {layout.size}")
    # Anything after the addresses is TLVs (ALPN, authority, SSL info...): not used, skipped.
    src, dst, sport, dport = layout.unpack_from(data, _V2_HEAD.size)
    ip = ipaddress.IPv4Address if family == _AF_INET else ipaddress.IPv6Address
    return ProxyHeader(length, 2, (str(ip(src)), sport), (str(ip(dst)), dport))


def encode_v1(source: Address, destination: Address) -> bytes:
    """A v1 line for a TCP connection from `source` to `destination`."""
    src, dst = _same_family(source[0], destination[0])
    proto = "TCP4" if src.version == 4 else "TCP6"
    return f"PROXY {proto} {src} {dst} {source[1]} {destination[1]}\r\n".encode("ascii")


def encode_v2(source: Address, destination: Address) -> bytes:
    """A v2 PROXY-command header for a TCP connection from `source` to `destination`."""
    src, dst = _same_family(source[0], destination[0])
    if src.version == 4:
        family, layout = _AF_INET, _V2_INET
    else:
        family, layout = _AF_INET6, _V2_INET6
    body = layout.pack(src.packed, dst.packed, source[1], destination[1])
    head = _V2_HEAD.pack(
        V2_SIGNATURE, _V2_VERSION | _CMD_PROXY, family << 4 | _PROTO_STREAM, len(body)
    )
    return head + body


def encode_v2_local() -> bytes:
    """A v2 LOCAL header: the connection is the sender's own (a health check)."""
    return _V2_HEAD.pack(V2_SIGNATURE, _V2_VERSION | _CMD_LOCAL, 0, 0)


def _same_family(
    source: str, destination: str
) -> tuple[
    ipaddress.IPv4Address | ipaddress.IPv6Address, ipaddress.IPv4Address | ipaddress.IPv6Address
]:
    """Both addresses in one family: an IPv4 one beside an IPv6 one is written v4-mapped."""
    src, dst = ipaddress.ip_address(source), ipaddress.ip_address(destination)
    if src.version != dst.version:
        if src.version == 4:
            src = ipaddress.IPv6Address(f"::ffff:{src}")
        else:
            dst = ipaddress.IPv6Address(f"::ffff:{dst}")
    return src, dst
