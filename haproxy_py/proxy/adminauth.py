"""Who may change a node through its admin API: tokens, certificate names, revocations.

The same-site check (`admin.refusal`) stops browsers; this stops other
programs that can reach the listener (any local user on loopback, any holder
of a certificate from `client_ca` over TLS). Both are optional and, once set,
apply to the changing endpoints (POST): reads stay open to what reaches the
listener.

    [admin]
    tokens = { agent = "/etc/haproxy-py/admin-agent.token", ops = "..." }
    [admin.tls]
    cert = "..."  key = "..."  client_ca = "..."
    client_names = ["agent-node1", "operator-alice"]   # certificate CNs that may change
    crl = "/etc/haproxy-py/pki/ca.crl"                  # `hactl certs revoke` writes it

A request may change the node with `Authorization: Bearer <token>` of one of
`tokens` (each read from its own file, which no other user may read), or with a
client certificate whose common name is in `client_names`; with neither
configured, as before, anyone who reaches the listener may. A certificate on
`crl` is refused for every request; the CRL is read again whenever its file
changes. Tokens, names and the CRL reload on SIGHUP; the bind address and the
TLS certificate, key and CA apply from the next start (`restart_needed`).
"""

from __future__ import annotations

import contextlib
import hmac
import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from haproxy_py.configfile import Table

CHANGES_FREE = ("GET", "HEAD", "OPTIONS")


class AdminAuthError(ValueError):
    """A token file or CRL that cannot be used; the message names the file and the fix."""


def load_token(path: Path) -> str:
    """The token in `path` (surrounding whitespace dropped); the file must be private."""
    try:
        st = path.stat()
        token = path.read_text().strip()
    except OSError as exc:
        raise AdminAuthError(f"{path}: cannot read ({exc.strerror})") from None
    except UnicodeDecodeError:
        raise AdminAuthError(f"{path}: not a text file") from None
    if st.st_mode & (stat.S_IRWXO):
        raise AdminAuthError(f"{path}: readable by other users; chmod o-rwx {path}")
    if len(token) < 16 or any(c.isspace() for c in token):
        raise AdminAuthError(
            f"{path}: expected one token of at least 16 characters without spaces "
            "(e.g. from `openssl rand -hex 32`)"
        )
    return token


@dataclass
class Revocations:
    """Serial numbers on a CRL signed by `ca`, read again whenever the file changes."""

    path: Path
    ca: Path
    _stamp: tuple[int, int, int] | None = None
    _serials: frozenset[int] = frozenset()

    def __post_init__(self) -> None:
        self.refresh()  # a bad CRL is a config error at load

    def refresh(self) -> None:
        try:
            st = self.path.stat()
        except OSError as exc:
            raise AdminAuthError(f"{self.path}: cannot read ({exc.strerror})") from None
        stamp = (st.st_ino, st.st_size, st.st_mtime_ns)
        if stamp != self._stamp:
            self._serials = _crl_serials(self.path, self.ca)
            self._stamp = stamp

    def revoked(self, serial: int) -> bool:
        with contextlib.suppress(AdminAuthError):  # being replaced: keep the last good list
            self.refresh()
        return serial in self._serials


def _crl_serials(path: Path, ca: Path) -> frozenset[int]:
    try:
        crl = x509.load_pem_x509_crl(path.read_bytes())
        issuer = x509.load_pem_x509_certificate(ca.read_bytes())
    except (OSError, ValueError) as exc:
        raise AdminAuthError(f"{path}: not a PEM CRL readable with {ca} ({exc})") from None
    key = issuer.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey):
        raise AdminAuthError(f"{ca}: unsupported CA key type")
    if crl.issuer != issuer.subject or not crl.is_signature_valid(key):
        raise AdminAuthError(f"{path}: not signed by the CA in {ca}")
    return frozenset(entry.serial_number for entry in crl)


@dataclass(frozen=True)
class AdminAuth:
    """Who may change the node (empty: whoever reaches the listener), and the revocations."""

    tokens: Mapping[str, str] = field(default_factory=dict)  # holder -> token
    client_names: frozenset[str] = frozenset()
    revocations: Revocations | None = None

    @property
    def restricted(self) -> bool:
        return bool(self.tokens or self.client_names)


@dataclass(frozen=True)
class Peer:
    """The client certificate of a TLS request, as far as the decision needs it."""

    name: str | None
    serial: int | None


def peer_of(cert: Mapping[str, Any] | None) -> Peer | None:
    """From `ssl.SSLSocket.getpeercert()`'s dict (None: no TLS or no certificate)."""
    if not cert:
        return None
    name = None
    for rdn in cert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                name = value
    raw = cert.get("serialNumber")
    try:
        serial = int(raw, 16) if isinstance(raw, str) else None
    except ValueError:
        serial = None
    return Peer(name, serial)


def decide(
    auth: AdminAuth, method: str, authorization: str | None, peer: Peer | None
) -> tuple[str | None, str | None]:
    """(who made the request, why it is refused): a refusal of None means serve it."""
    revocations, serial = auth.revocations, peer.serial if peer is not None else None
    if revocations is not None and serial is not None and revocations.revoked(serial):
        name = peer.name if peer is not None else None
        return name, f"certificate {name!r} (serial {serial:x}) is revoked"
    who = peer.name if peer is not None else None
    if method in CHANGES_FREE or not auth.restricted:
        return who, None
    scheme, _, presented = (authorization or "").partition(" ")
    if scheme.lower() == "bearer" and presented:
        for holder, token in auth.tokens.items():
            if hmac.compare_digest(presented.strip().encode(), token.encode()):
                return f"token {holder}", None
    if who is not None and who in auth.client_names:
        return who, None
    allowed = []
    if auth.tokens:
        allowed.append("a bearer token")
    if auth.client_names:
        allowed.append("a client certificate named in client_names")
    return who, f"changes need {' or '.join(allowed)}"


def restart_needed(old: Any, new: Any) -> list[str]:
    """The `[admin]` settings that changed and apply only from the next start.

    `old` and `new` are `config.AdminConfig`s (duck-typed: this module stays pure)."""
    changed = []
    if (old.host, old.port) != (new.host, new.port):
        changed.append("bind")
    old_tls, new_tls = old.tls, new.tls
    if (old_tls is None) != (new_tls is None) or (
        old_tls is not None
        and new_tls is not None
        and (
            _fingerprint(old_tls.certificate.cert, old_tls.certificate.key, old_tls.client_ca)
            != _fingerprint(new_tls.certificate.cert, new_tls.certificate.key, new_tls.client_ca)
        )
    ):
        changed.append("tls")
    return changed


def _fingerprint(*paths: Path) -> tuple[tuple[str, int, int], ...]:
    out = []
    for path in paths:
        try:
            st = os.stat(path)
            out.append((str(path), st.st_size, st.st_mtime_ns))
        except OSError:
            out.append((str(path), -1, -1))
    return tuple(out)


def parse_admin_auth(admin: Table, client_ca: Path | None) -> AdminAuth:
    """`tokens` of `[admin]`, `client_names` and `crl` of `[admin.tls]` (files checked)."""
    tokens: dict[str, str] = {}
    if "tokens" in admin.data:
        for holder, _ in admin.table("tokens").data.items():
            entry = admin.table("tokens")
            try:
                tokens[holder] = load_token(Path(entry.string(holder)))
            except AdminAuthError as exc:
                entry.fail(holder, str(exc))
    names: frozenset[str] = frozenset()
    revocations = None
    tls = admin.data.get("tls")
    if isinstance(tls, dict):
        entry = admin.table("tls")
        names = frozenset(entry.strings("client_names", []))
        if "crl" in entry.data and client_ca is not None:
            try:
                revocations = Revocations(Path(entry.string("crl")), client_ca)
            except AdminAuthError as exc:
                entry.fail("crl", str(exc))
    return AdminAuth(tokens=tokens, client_names=names, revocations=revocations)
