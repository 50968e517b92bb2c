"""The cluster's certificates: two CAs, and server/peer/client certificates signed by them.

Layout of a certificate directory (predictable, so that configs and Ansible can
name files without asking):

    DIR/ca.crt  DIR/ca.key          the cluster CA (ECDSA P-256, 10 years): etcd's
                                    client port, agents, controllers, operators
    DIR/ca.crl                      its revocation list (`hactl certs revoke`)
    DIR/peer-ca.crt  .key  .crl     the etcd peer CA: signs member peer certificates
                                    only, so no client certificate opens the raft port
    DIR/<name>.crt  DIR/<name>.key  one certificate per etcd member, agent,
                                    controller, hactl user or proxy listener

Identities: a client certificate's common name is its etcd user name, and the
roles granted to it (haproxy_py.cluster.rbac) follow from its prefix:
`agent-<node>`, `controller-<node>`, `operator-<name>`; `root` is the etcd
administrator and stays with the CA on the control machine.

Rules:

* Keys are ECDSA P-256, written PKCS#8 PEM with mode 0600 (created that way,
  never chmod-ed afterwards, so a key is never readable by others, not even
  for an instant). Files are replaced atomically (write + rename).
* A server certificate (the default) carries both serverAuth and clientAuth:
  etcd members use one certificate as server and as peer client, and etcd
  3.4's gateway dials itself with it. `client=True` gives clientAuth only
  (hactl users, agents, controllers); its common name is the etcd user name.
* Leaves live `LEAF_DAYS` less a random part of `STAGGER_DAYS`, so that
  certificates issued in one run do not all expire on the same day.
* Idempotent: an existing CA is kept unless `force`; an existing certificate
  is kept when it was signed by this CA, has the same SANs and usage and is
  valid for more than `RENEW_BEFORE`, otherwise it is re-issued.
* Every expected failure is a `PkiError` whose message names the file and
  the check that failed.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import re
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeAlias, TypeVar

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes, PublicKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA = "ca"  # the cluster CA's file stem
PEER_CA = "peer-ca"  # the etcd peer CA's
CA_DAYS = 3650
LEAF_DAYS = 365
STAGGER_DAYS = 73  # a leaf's lifetime is shortened by up to this (20 %), at random
RENEW_BEFORE = dt.timedelta(days=30)
# Tolerate a little clock skew between the machine that issues and the ones that verify.
BACKDATE = dt.timedelta(minutes=5)

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
_DNS_RE = re.compile(
    r"^(\*\.)?([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$"
)

San: TypeAlias = x509.DNSName | x509.IPAddress  # (the build type-checks without cryptography)
_Ext = TypeVar("_Ext", bound=x509.ExtensionType)


class PkiError(Exception):
    """A certificate or key is missing, unreadable, malformed or unfit; the message says which."""


@dataclass(frozen=True)
class Issued:
    """Where a certificate and its key are, and whether this call wrote them."""

    cert: Path
    key: Path
    created: bool


def ca_paths(directory: Path, ca: str = CA) -> tuple[Path, Path]:
    return directory / f"{ca}.crt", directory / f"{ca}.key"


def crl_path(directory: Path, ca: str = CA) -> Path:
    return directory / f"{ca}.crl"


def parse_san(value: str) -> San:
    """`198.18.0.10` or `::1` becomes an IP SAN, `node-a.example` a DNS SAN."""
    value = value.strip()
    try:
        return x509.IPAddress(ipaddress.ip_address(value))
    except ValueError:
        pass
    if not _DNS_RE.match(value) or len(value) > 253:
        raise PkiError(f"subject alternative name {value!r}: expected an IP address or a DNS name")
    return x509.DNSName(value.lower())


def init_ca(
    directory: Path,
    *,
    common_name: str = "haproxy-py cluster CA",
    force: bool = False,
    ca: str = CA,
) -> Issued:
    """Create a CA (the cluster CA, or with `ca=PEER_CA` the etcd peer CA) in `directory`, or
    keep the one already there; either way its CRL exists afterwards (etcd needs the file)."""
    cert_path, key_path = ca_paths(directory, ca)
    if not force and (cert_path.exists() or key_path.exists()):
        # Keep it, but only if it is whole: half a CA would fail later and far away.
        load_ca(directory, ca)
        if not crl_path(directory, ca).exists():
            _write_crl(directory, ca, [])
        return Issued(cert_path, key_path, created=False)
    _make_dir(directory)
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + dt.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(ca=True), critical=True)
        .add_extension(ski, critical=False)
        .sign(key, hashes.SHA256())
    )
    _write_pair(cert_path, key_path, cert, key)
    _write_crl(directory, ca, [])
    return Issued(cert_path, key_path, created=True)


def load_ca(directory: Path, ca: str = CA) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """The CA certificate and key from `directory`, checked to belong together."""
    cert_path, key_path = ca_paths(directory, ca)
    if not cert_path.exists() and not key_path.exists():
        what, flag = ("etcd peer CA", " --peer") if ca == PEER_CA else ("cluster CA", "")
        raise PkiError(f"{directory}: no {what} here (make one: hactl certs init --out DIR{flag})")
    cert = load_cert(cert_path)
    key = load_key(key_path)
    check_pair(cert, key, cert_path, key_path)
    constraints = _extension(cert, x509.BasicConstraints)
    if constraints is None or not constraints.ca:
        raise PkiError(f"{cert_path}: not a CA certificate (basicConstraints CA:FALSE)")
    return cert, key


def issue(
    ca_dir: Path,
    name: str,
    sans: Iterable[str] = (),
    *,
    client: bool = False,
    out: Path | None = None,
    force: bool = False,
    ca: str = CA,
) -> Issued:
    """Issue `<out>/<name>.crt` + `.key` signed by the CA `ca` in `ca_dir` (out defaults to
    ca_dir): the cluster CA, or `PEER_CA` for an etcd member's peer certificate.

    A server certificate without SANs gets `name` as its only DNS SAN.
    """
    if not _NAME_RE.match(name):
        raise PkiError(
            f"certificate name {name!r}: expected letters, digits, '.', '_' or '-' "
            "(it becomes the file name and the common name)"
        )
    if name in (CA, PEER_CA):
        raise PkiError(f"certificate name {name!r} is reserved for a CA")
    san_list = _dedupe(parse_san(s) for s in sans)
    if not san_list and not client:
        san_list = [parse_san(name)]
    ca_cert, ca_key = load_ca(ca_dir, ca)
    out = ca_dir if out is None else out
    cert_path, key_path = out / f"{name}.crt", out / f"{name}.key"
    usages = _usages(client)
    if not force and _still_good(cert_path, key_path, ca_cert, san_list, usages):
        return Issued(cert_path, key_path, created=False)
    _make_dir(out)
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    lifetime = dt.timedelta(days=LEAF_DAYS) - dt.timedelta(
        hours=secrets.randbelow(STAGGER_DAYS * 24)
    )
    not_after = min(now + lifetime, ca_cert.not_valid_after_utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(ca=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
    )
    if san_list:
        builder = builder.add_extension(x509.SubjectAlternativeName(san_list), critical=False)
    _write_pair(cert_path, key_path, builder.sign(ca_key, hashes.SHA256()), key)
    return Issued(cert_path, key_path, created=True)


def revoke(ca_dir: Path, cert_path: Path, *, ca: str = CA) -> tuple[Path, bool]:
    """Add the certificate at `cert_path` to the CRL of `ca` in `ca_dir`; returns (the CRL,
    whether it was added now). etcd reads the CRL on every new connection, so a revoked
    client is refused from its next connection on; a connection already open stays."""
    ca_cert, _ = load_ca(ca_dir, ca)
    cert = load_cert(cert_path)
    try:
        cert.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, InvalidSignature):
        raise PkiError(f"{cert_path}: not issued by {ca_paths(ca_dir, ca)[0]}") from None
    revoked = revoked_serials(ca_dir, ca)
    if cert.serial_number in revoked:
        return crl_path(ca_dir, ca), False
    _write_crl(ca_dir, ca, [*revoked, cert.serial_number])
    return crl_path(ca_dir, ca), True


def revoked_serials(ca_dir: Path, ca: str = CA) -> list[int]:
    """The serial numbers on the CRL of `ca` (none if it has no CRL yet)."""
    path = crl_path(ca_dir, ca)
    if not path.exists():
        return []
    try:
        crl = x509.load_pem_x509_crl(_read(path))
    except ValueError:
        raise PkiError(f"{path}: not a PEM certificate revocation list") from None
    return [entry.serial_number for entry in crl]


def _write_crl(ca_dir: Path, ca: str, serials: Sequence[int]) -> None:
    """The CRL, valid as long as the CA (etcd ignores dates; OpenSSL refuses a stale CRL)."""
    ca_cert, ca_key = load_ca(ca_dir, ca)
    now = _now()
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca_cert.subject)
        .last_update(now - BACKDATE)
        .next_update(ca_cert.not_valid_after_utc)
    )
    for serial in serials:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(now).build()
        )
    crl = builder.sign(ca_key, hashes.SHA256())
    _write_atomic(crl_path(ca_dir, ca), crl.public_bytes(serialization.Encoding.PEM), 0o644)


def check_client_files(cacert: Path, cert: Path | None, key: Path | None) -> None:
    """Check the files a TLS client will present, before dialling, so a mistake names its file.

    The peer's own checks (is our certificate from the CA it trusts?) can only
    happen in the handshake; everything that can be checked locally is here.
    """
    if (cert is None) != (key is None):
        raise PkiError("a client certificate and its key go together: give both or neither")
    ca = load_bundle(cacert)
    now = _now()
    for ca_cert in ca:
        check_dates(ca_cert, cacert, now)
    if cert is None or key is None:
        return
    leaf = load_cert(cert)
    check_pair(leaf, load_key(key), cert, key)
    check_dates(leaf, cert, now)
    eku = _extension(leaf, x509.ExtendedKeyUsage)
    if eku is not None and ExtendedKeyUsageOID.CLIENT_AUTH not in eku:
        raise PkiError(f"{cert}: not usable as a client certificate (no clientAuth extended usage)")


# -- the checks every certificate file goes through (the cluster's, and the proxy's own) ------


def load_cert(path: Path) -> x509.Certificate:
    return load_bundle(path)[0]


def load_key(path: Path) -> ec.EllipticCurvePrivateKey:
    key = load_private_key(path)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise PkiError(f"{path}: expected an ECDSA key, got {type(key).__name__}")
    return key


def load_private_key(path: Path) -> PrivateKeyTypes:
    """Any unencrypted PEM private key (the proxy's listeners also take RSA)."""
    data = _read(path)
    try:
        return serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise PkiError(
            f"{path}: the key is encrypted; store it without a passphrase (mode 0600)"
        ) from None
    except (ValueError, UnsupportedAlgorithm):
        raise PkiError(f"{path}: not a PEM private key") from None


def load_bundle(path: Path) -> list[x509.Certificate]:
    """Every certificate in a PEM file, leaf first."""
    data = _read(path)
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError:
        raise PkiError(f"{path}: not a PEM certificate") from None
    return certs


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise PkiError(f"{path}: no such file") from None
    except PermissionError:
        raise PkiError(f"{path}: permission denied (run as a user who may read it)") from None
    except OSError as exc:
        raise PkiError(f"{path}: cannot read: {exc.strerror}") from None


def check_pair(
    cert: x509.Certificate, key: PrivateKeyTypes, cert_path: Path, key_path: Path
) -> None:
    """The key is the certificate's (compared as public keys, any algorithm)."""
    if _public_der(cert.public_key()) != _public_der(key.public_key()):
        raise PkiError(f"{key_path}: this key does not belong to the certificate {cert_path}")


def check_dates(cert: x509.Certificate, what: Path | str, now: dt.datetime) -> None:
    """Valid at `now`; `what` names the file (and the place in a chain) in the message."""
    if now < cert.not_valid_before_utc:
        when = cert.not_valid_before_utc.isoformat()
        raise PkiError(f"{what}: not valid yet (valid from {when}; check the clock)")
    if now > cert.not_valid_after_utc:
        when = cert.not_valid_after_utc.isoformat()
        raise PkiError(f"{what}: expired on {when} (issue a new one with `hactl certs issue`)")


def _public_der(public_key: PublicKeyTypes) -> bytes:
    return public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _still_good(
    cert_path: Path,
    key_path: Path,
    ca_cert: x509.Certificate,
    sans: Sequence[San],
    usages: list[x509.ObjectIdentifier],
) -> bool:
    if not (cert_path.exists() and key_path.exists()):
        return False
    try:
        cert = load_cert(cert_path)
        check_pair(cert, load_key(key_path), cert_path, key_path)
        cert.verify_directly_issued_by(ca_cert)
    except (PkiError, ValueError, TypeError, InvalidSignature):
        return False
    san_ext = _extension(cert, x509.SubjectAlternativeName)
    have_sans = set(san_ext) if san_ext is not None else set()
    eku = _extension(cert, x509.ExtendedKeyUsage)
    have_usages = set(eku) if eku is not None else set()
    fresh = cert.not_valid_after_utc - _now() > RENEW_BEFORE
    return fresh and have_sans == set(sans) and have_usages == set(usages)


def _key_usage(*, ca: bool) -> x509.KeyUsage:
    """Signatures only; a CA also signs certificates and CRLs."""
    return x509.KeyUsage(
        digital_signature=True,
        key_cert_sign=ca,
        crl_sign=ca,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        encipher_only=False,
        decipher_only=False,
    )


def _usages(client: bool) -> list[x509.ObjectIdentifier]:
    if client:
        return [ExtendedKeyUsageOID.CLIENT_AUTH]
    return [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]


def _extension(cert: x509.Certificate, kind: type[_Ext]) -> _Ext | None:
    try:
        return cert.extensions.get_extension_for_class(kind).value
    except x509.ExtensionNotFound:
        return None


def _dedupe(sans: Iterable[San]) -> list[San]:
    seen: list[San] = []
    for san in sans:
        if san not in seen:
            seen.append(san)
    return seen


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _make_dir(directory: Path) -> None:
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise PkiError(f"{directory}: cannot create directory: {exc.strerror}") from None


def _write_pair(
    cert_path: Path, key_path: Path, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey
) -> None:
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    # Key first: a certificate without its key is useless, a key without a certificate harmless.
    _write_atomic(key_path, key_pem, 0o600)
    _write_atomic(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)


def _write_atomic(path: Path, data: bytes, mode: int) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.unlink(missing_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise PkiError(f"{path}: cannot write: {exc.strerror}") from None
