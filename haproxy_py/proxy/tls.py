"""TLS for listeners (termination, several certificates chosen by SNI) and for backends.

Config, on a listener (one certificate, or several: the first is the default,
the others are chosen by the DNS names in their certificates, as HAProxy's and
NGINX's SNI selection does):

    tls = { cert = "/etc/haproxy-py/web.crt", key = "/etc/haproxy-py/web.key" }
    tls = [ { cert = "a.crt", key = "a.key" }, { cert = "b.crt", key = "b.key" } ]

and on a backend (the server's certificate is verified against `tls_ca`, or
the system's CAs, and its name against `tls_server_name` or the server host):

    tls = true
    tls_ca = "/etc/haproxy-py/ca.crt"
    tls_server_name = "app.internal"

Everything that can be wrong with the files is found when the config is read
(by `check-config` and at startup or reload), and the message names the file
and the problem: a handshake failure at 3 a.m. is the wrong place to learn a
certificate expired.

A listener keeps one `ServerTls` for its whole life: its SSLContext picks the
certificate for each handshake through the SNI callback, so a reload swaps the
certificates without rebinding the socket or touching open connections.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import ssl
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

from haproxy_py import pki
from haproxy_py.configfile import Table

ALPN = ["http/1.1"]
# Forward secrecy and AEAD only (TLS 1.2); TLS 1.3 suites are OpenSSL's defaults, all modern.
CIPHERS = (
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
    "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
    "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305"
)


@dataclass(frozen=True)
class Certificate:
    """A checked certificate file and its key, and the DNS names it serves (for SNI)."""

    cert: Path
    key: Path
    names: tuple[str, ...]
    not_after: dt.datetime


@dataclass(frozen=True)
class ListenerTls:
    """A listener's certificates; the first one answers clients whose SNI matches none."""

    certificates: tuple[Certificate, ...]


@dataclass(frozen=True)
class AdminTls:
    """The admin API over TLS: its certificate, and the CA that signs the clients it lets in."""

    certificate: Certificate
    client_ca: Path


@dataclass(frozen=True)
class BackendTls:
    """TLS towards a backend's servers; `ca` None means the system's trusted CAs."""

    ca: Path | None = None
    server_name: str | None = None


def parse_listener_tls(listener: Table, now: dt.datetime | None = None) -> ListenerTls | None:
    """The `tls` key of a listener table, its files checked; None when the listener is plain."""
    raw = listener.data.get("tls")
    if raw is None:
        return None
    entries = [listener.table("tls")] if isinstance(raw, dict) else list(listener.array("tls"))
    if not entries:
        listener.fail("tls", "expected { cert = ..., key = ... } or a non-empty list of them")
    when = now or dt.datetime.now(dt.UTC)
    return ListenerTls(tuple(_parse_certificate(entry, when) for entry in entries))


def parse_backend_tls(backend: Table) -> BackendTls | None:
    """The `tls`, `tls_ca` and `tls_server_name` keys of a backend table."""
    enabled = backend.boolean("tls", False)
    ca = backend.string("tls_ca", None)
    server_name = backend.string("tls_server_name", None)
    if not enabled:
        for key in ("tls_ca", "tls_server_name"):
            if key in backend.data:
                backend.fail(key, "only used with tls = true")
        return None
    if ca is not None:
        try:
            client_context(BackendTls(Path(ca)))
        except ValueError as exc:
            backend.fail("tls_ca", str(exc))
    return BackendTls(None if ca is None else Path(ca), server_name)


def parse_admin_tls(admin: Table, now: dt.datetime | None = None) -> AdminTls | None:
    """The `tls = { cert, key, client_ca }` key of `[admin]`, its files checked; None if plain.

    Client certificates are not optional here: whoever reaches the admin API can
    drain the node, so TLS without them would protect nothing that matters.
    """
    if admin.data.get("tls") is None:
        return None
    entry = admin.table("tls")
    entry.reject_unknown({"cert", "key", "client_ca", "client_names", "crl"})  # (adminauth)
    cert_path, key_path = Path(entry.string("cert")), Path(entry.string("key"))
    client_ca = Path(entry.string("client_ca"))
    try:
        certificate = check_certificate(cert_path, key_path, now or dt.datetime.now(dt.UTC))
    except CertificateError as exc:
        entry.fail(exc.key, str(exc))
    config = AdminTls(certificate, client_ca)
    try:
        admin_server_context(config)
    except ValueError as exc:
        entry.fail("client_ca", str(exc))
    return config


def _parse_certificate(entry: Table, now: dt.datetime) -> Certificate:
    entry.reject_unknown({"cert", "key"})
    cert_path = Path(entry.string("cert"))
    key_path = Path(entry.string("key"))
    try:
        certificate = check_certificate(cert_path, key_path, now)
    except CertificateError as exc:
        entry.fail(exc.key, str(exc))
    return certificate


class CertificateError(ValueError):
    """A certificate or key file is unusable; `key` says which of the two ("cert" or "key")."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


def check_certificate(cert_path: Path, key_path: Path, now: dt.datetime) -> Certificate:
    """Read and check a certificate chain and its key (with `pki`'s checks, the same as for
    the cluster's own files); raise CertificateError naming the file."""
    with _as_certificate_error("cert"):
        chain = pki.load_bundle(cert_path)
    with _as_certificate_error("key"):
        pki.check_pair(chain[0], pki.load_private_key(key_path), cert_path, key_path)
    problem = key_mode_problem(key_path.stat())
    if problem is not None:
        raise CertificateError("key", f"{key_path}: {problem}")
    with _as_certificate_error("cert"):
        for position, cert in enumerate(chain):
            where = f" (chain certificate {position + 1})" if position else ""
            pki.check_dates(cert, f"{cert_path}{where}", now)
    try:
        server_context(cert_path, key_path)
    except ssl.SSLError as exc:
        raise CertificateError(
            "cert", f"{cert_path}: OpenSSL refused it: {exc.reason or exc}"
        ) from None
    return Certificate(cert_path, key_path, _dns_names(chain[0]), chain[0].not_valid_after_utc)


@contextlib.contextmanager
def _as_certificate_error(key: str) -> Iterator[None]:
    try:
        yield
    except pki.PkiError as exc:
        raise CertificateError(key, str(exc)) from None


def key_mode_problem(st: os.stat_result) -> str | None:
    """Why a private key file is too open (PostgreSQL's rule: 0600, or 0640 if root owns it)."""
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o077 == 0 or (st.st_uid == 0 and mode & 0o037 == 0):
        return None
    return (
        f"mode {mode:04o} lets other users read the key; "
        "chmod 0600 it (0640 if root owns it and the proxy's group reads it)"
    )


def _dns_names(cert: x509.Certificate) -> tuple[str, ...]:
    """The names SNI may ask for: the DNS SANs, else the common name (older certificates)."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        return tuple(name.lower() for name in san.get_values_for_type(x509.DNSName))
    except x509.ExtensionNotFound:
        pass
    common = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    return tuple(str(attr.value).lower() for attr in common)


def _base_server_context() -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(CIPHERS)
    context.set_alpn_protocols(ALPN)
    # No TLS 1.2 session tickets: one never-rotated, process-lifetime ticket key would
    # protect every resumed session (Mozilla server-side-tls#135); TLS 1.3 tickets stay.
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION | ssl.OP_NO_TICKET
    return context


def server_context(cert: Path, key: Path) -> ssl.SSLContext:
    """A server SSLContext for one certificate: TLS 1.2+, modern ciphers, ALPN http/1.1."""
    context = _base_server_context()
    context.load_cert_chain(cert, key)
    return context


def admin_server_context(config: AdminTls) -> ssl.SSLContext:
    """A server SSLContext that admits only clients whose certificate `client_ca` signed.

    ValueError naming the file when the CA cannot be loaded.
    """
    context = server_context(config.certificate.cert, config.certificate.key)
    _load_ca(context, config.client_ca)
    context.verify_mode = ssl.CERT_REQUIRED
    return context


def _load_ca(context: ssl.SSLContext, ca: Path) -> None:
    try:
        context.load_verify_locations(cafile=str(ca))
    except FileNotFoundError:
        raise ValueError(f"{ca}: no such file") from None
    except PermissionError:
        raise ValueError(f"{ca}: permission denied (this process's user must read it)") from None
    except (ssl.SSLError, OSError) as exc:
        raise ValueError(f"{ca}: not a PEM CA certificate ({exc})") from None


class ServerTls:
    """A listener's TLS: one SSLContext for its life, certificates picked per handshake by SNI."""

    def __init__(self, config: ListenerTls) -> None:
        self.context = _base_server_context()
        self.context.sni_callback = self._select
        self._default: ssl.SSLContext
        self._exact: dict[str, ssl.SSLContext] = {}
        self._wildcard: dict[str, ssl.SSLContext] = {}
        self.update(config)

    def update(self, config: ListenerTls) -> None:
        """Use these certificates for new handshakes (on reload); open connections keep theirs."""
        contexts = [(c, server_context(c.cert, c.key)) for c in config.certificates]
        exact: dict[str, ssl.SSLContext] = {}
        wildcard: dict[str, ssl.SSLContext] = {}
        for certificate, context in contexts:
            for name in certificate.names:
                table, key = (wildcard, name[2:]) if name.startswith("*.") else (exact, name)
                table.setdefault(key, context)  # the first certificate listed wins a shared name
        self._default, self._exact, self._wildcard = contexts[0][1], exact, wildcard

    def select(self, server_name: str | None) -> ssl.SSLContext:
        """The context for a ClientHello's server name: exact, then `*.parent`, then default."""
        if server_name:
            name = server_name.lower().rstrip(".")
            found = self._exact.get(name)
            if found is None and "." in name:
                found = self._wildcard.get(name.split(".", 1)[1])
            if found is not None:
                return found
        return self._default

    def _select(
        self, connection: ssl.SSLObject | ssl.SSLSocket, server_name: str | None, _: ssl.SSLContext
    ) -> None:
        connection.context = self.select(server_name)


def client_context(config: BackendTls) -> ssl.SSLContext:
    """A client SSLContext for a backend: certificate and host name verified, TLS 1.2+."""
    try:
        context = ssl.create_default_context(cafile=None if config.ca is None else str(config.ca))
    except FileNotFoundError:
        raise ValueError(f"{config.ca}: no such file") from None
    except PermissionError:
        raise ValueError(
            f"{config.ca}: permission denied (the proxy's user must read it)"
        ) from None
    except (ssl.SSLError, OSError) as exc:
        raise ValueError(f"{config.ca}: not a PEM CA certificate ({exc})") from None
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(ALPN)
    return context
