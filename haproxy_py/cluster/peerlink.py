"""Node-to-node calls over mutual TLS with the cluster's own certificates (agents' peer
endpoints: the failsafe of `agent.failsafe`, the controller's liveness probe).

Each side proves itself with the certificate it already has for etcd (`haproxy_py.pki`):
`agent-<node>`, `controller-<node>`, `operator-<name>`, signed by the cluster CA. The
server (an agent) asks for a client certificate that the CA signed, checked against the
CA's CRL when one is configured, and reads the caller's identity from its common name.
The client checks the server's certificate itself after the handshake, which proved that
the server holds the certificate's key: signed by the CA, in its validity period, not
revoked, and with the common name of the node it meant to reach. (Agent certificates are
client certificates; OpenSSL's client-side purpose check would refuse them as servers.)

Messages are small JSON objects, bounded both ways (`MESSAGE_MAX`), and every call has a
deadline.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.x509.oid import NameOID

PEER_PORT = 9734
MESSAGE_MAX = 4096  # bytes of one request or answer body
HEAD_MAX = 1024  # bytes of an answer's status line and headers
HANDSHAKE_TIMEOUT = 2.0


class PeerError(Exception):
    """A peer call that did not produce an authenticated answer; the text says why."""


@dataclass(frozen=True)
class PeerTls:
    """The CA, this daemon's certificate and key, and optionally the CA's CRL."""

    cacert: Path
    cert: Path
    key: Path
    crl: Path | None = None


def common_name(cert: x509.Certificate) -> str | None:
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value) if names else None


def server_context(tls: PeerTls) -> ssl.SSLContext:
    """TLS 1.2+; a client certificate from the cluster CA (and not on its CRL) required."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(tls.cert, tls.key)
    context.load_verify_locations(cafile=str(tls.cacert))
    if tls.crl is not None:
        context.load_verify_locations(cafile=str(tls.crl))
        context.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF
    context.verify_mode = ssl.CERT_REQUIRED
    return context


def client_identity(peercert: Mapping[str, Any] | None) -> str | None:
    """The common name of a verified client certificate (`ssl.SSLSocket.getpeercert()`)."""
    for rdn in (peercert or {}).get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return str(value)
    return None


class ServerCheck:
    """Verifies a server certificate against the cluster CA and its CRL."""

    def __init__(self, tls: PeerTls) -> None:
        self.ca = x509.load_pem_x509_certificate(tls.cacert.read_bytes())
        self.revoked: frozenset[int] = frozenset()
        if tls.crl is not None:
            crl = x509.load_pem_x509_crl(tls.crl.read_bytes())
            self.revoked = frozenset(entry.serial_number for entry in crl)

    def check(self, der: bytes | None, expected: str) -> None:
        if der is None:
            raise PeerError("no server certificate")
        cert = x509.load_der_x509_certificate(der)
        try:
            cert.verify_directly_issued_by(self.ca)
        except (ValueError, TypeError, InvalidSignature):
            raise PeerError("server certificate not signed by the cluster CA") from None
        now = dt.datetime.now(dt.UTC)
        if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
            raise PeerError("server certificate outside its validity period")
        if cert.serial_number in self.revoked:
            raise PeerError("server certificate revoked")
        name = common_name(cert)
        if name != expected:
            raise PeerError(f"server is {name!r}, expected {expected!r}")


Conn = tuple[asyncio.StreamReader, asyncio.StreamWriter]


class PeerClient:
    """Calls other nodes' peer endpoints with this daemon's certificate. A connection is
    opened per peer, its certificate checked before anything is sent, and kept open between
    calls (HTTP/1.1 keep-alive), so a round costs a small request, not a TLS handshake."""

    def __init__(self, tls: PeerTls, timeout: float) -> None:
        self.timeout = timeout
        self.check = ServerCheck(tls)
        self._context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        self._context.minimum_version = ssl.TLSVersion.TLSv1_2
        self._context.check_hostname = False
        self._context.verify_mode = ssl.CERT_NONE  # the server is verified by `check`
        self._context.load_cert_chain(tls.cert, tls.key)
        self._idle: dict[tuple[str, int, str], Conn] = {}

    def close(self) -> None:
        for _, writer in self._idle.values():
            writer.close()
        self._idle.clear()

    async def post(
        self, address: str, port: int, expected: str, path: str, body: Mapping[str, Any]
    ) -> Any:
        """POST `body` to https://address:port/path and return the JSON answer of the server
        whose certificate names `expected`; PeerError otherwise (also on a timeout)."""
        payload = json.dumps(dict(body), separators=(",", ":")).encode()
        if len(payload) > MESSAGE_MAX:
            raise PeerError(f"request larger than {MESSAGE_MAX} bytes")
        host = f"[{address}]" if ":" in address else address
        request = (
            f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n"
        ).encode() + payload
        key = (address, port, expected)
        try:
            async with asyncio.timeout(self.timeout):
                conn = self._idle.pop(key, None)
                if conn is not None:
                    try:  # a kept connection the server may have closed meanwhile
                        return await self._exchange(key, conn, request)
                    except (OSError, asyncio.IncompleteReadError):
                        pass
                return await self._exchange(key, await self._connect(*key), request)
        except TimeoutError:
            raise PeerError(f"no answer within {self.timeout:g} s") from None
        except (
            OSError,
            ssl.SSLError,
            asyncio.IncompleteReadError,
            asyncio.LimitOverrunError,
        ) as exc:
            raise PeerError(str(exc) or type(exc).__name__) from None

    async def _connect(self, address: str, port: int, expected: str) -> Conn:
        reader, writer = await asyncio.open_connection(
            address, port, ssl=self._context, limit=HEAD_MAX
        )
        tls = writer.get_extra_info("ssl_object")
        try:
            self.check.check(tls.getpeercert(binary_form=True) if tls else None, expected)
        except PeerError:
            writer.close()
            raise
        return reader, writer

    async def _exchange(self, key: tuple[str, int, str], conn: Conn, request: bytes) -> Any:
        reader, writer = conn
        try:
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            status, length, keep = _head(head)
            if length > MESSAGE_MAX:
                raise PeerError(f"answer larger than {MESSAGE_MAX} bytes")
            body = await reader.readexactly(length)
        except BaseException:
            writer.close()
            raise
        if keep:
            self._idle[key] = conn
        else:
            writer.close()
        if status != 200:
            raise PeerError(f"HTTP {status}: {body[:200].decode(errors='replace')}")
        try:
            return json.loads(body)
        except ValueError:
            raise PeerError("answer is not JSON") from None


def _head(head: bytes) -> tuple[int, int, bool]:
    """(status, Content-Length, keep the connection) of an HTTP/1.1 answer's head."""
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split()
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
        raise PeerError("not an HTTP answer")
    length, keep = None, True
    for line in lines[1:]:
        name, _, value = line.partition(":")
        name, value = name.strip().lower(), value.strip()
        if name == "content-length" and value.isdigit():
            length = int(value)
        elif name == "connection" and value.lower() == "close":
            keep = False
    if length is None:
        raise PeerError("answer without Content-Length")
    return int(parts[1]), length, keep
