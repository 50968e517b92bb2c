"""The cluster PKI: a CA, certificates with the right usages and SANs, keys kept private."""

from __future__ import annotations

import ipaddress
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from haproxy_py import pki


@pytest.fixture
def ca_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "pki"
    pki.init_ca(directory)
    return directory


def _sans(cert: x509.Certificate) -> set[str]:
    ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return {str(name.value) for name in ext}


def _usages(cert: x509.Certificate) -> set[x509.ObjectIdentifier]:
    return set(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)


class TestCa:
    def test_ca_is_p256_self_signed_and_a_ca(self, ca_dir: Path) -> None:
        """The CA is an ECDSA P-256 self-signed CA certificate valid for years."""
        cert, key = pki.load_ca(ca_dir)
        assert isinstance(key.curve, ec.SECP256R1)
        cert.verify_directly_issued_by(cert)
        assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
        lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
        assert lifetime.days >= 3650

    def test_key_is_private(self, ca_dir: Path) -> None:
        """The CA key is readable by its owner only."""
        assert stat.S_IMODE((ca_dir / "ca.key").stat().st_mode) == 0o600

    def test_existing_ca_is_kept(self, ca_dir: Path) -> None:
        """A second init keeps the CA (every issued certificate stays valid)."""
        before = (ca_dir / "ca.crt").read_bytes()
        issued = pki.init_ca(ca_dir)
        assert not issued.created
        assert (ca_dir / "ca.crt").read_bytes() == before

    def test_force_replaces_ca(self, ca_dir: Path) -> None:
        before = (ca_dir / "ca.crt").read_bytes()
        assert pki.init_ca(ca_dir, force=True).created
        assert (ca_dir / "ca.crt").read_bytes() != before

    def test_half_a_ca_is_an_error(self, ca_dir: Path) -> None:
        """A CA whose key is missing is reported, not silently replaced."""
        (ca_dir / "ca.key").unlink()
        with pytest.raises(pki.PkiError, match=r"ca\.key: no such file"):
            pki.init_ca(ca_dir)

    def test_missing_ca_names_the_fix(self, tmp_path: Path) -> None:
        with pytest.raises(pki.PkiError, match="hactl certs init"):
            pki.issue(tmp_path, "node-a")


class TestIssue:
    def test_server_certificate_serves_and_peers(self, ca_dir: Path) -> None:
        """A server certificate has serverAuth+clientAuth and the given DNS and IP SANs."""
        issued = pki.issue(ca_dir, "etcd-1", ["127.0.0.1", "localhost"])
        cert = pki.load_cert(issued.cert)
        ca, _ = pki.load_ca(ca_dir)
        cert.verify_directly_issued_by(ca)
        assert _usages(cert) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
        assert _sans(cert) == {"127.0.0.1", "localhost"}
        assert issued.cert == ca_dir / "etcd-1.crt"
        assert stat.S_IMODE(issued.key.stat().st_mode) == 0o600

    def test_server_certificate_defaults_its_san_to_the_name(self, ca_dir: Path) -> None:
        cert = pki.load_cert(pki.issue(ca_dir, "node-a").cert)
        assert _sans(cert) == {"node-a"}

    def test_client_certificate_is_client_only(self, ca_dir: Path) -> None:
        """A client certificate cannot serve, and its common name is the user name."""
        cert = pki.load_cert(pki.issue(ca_dir, "alice", client=True).cert)
        assert _usages(cert) == {ExtendedKeyUsageOID.CLIENT_AUTH}
        cn = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value
        assert cn == "alice"

    def test_ip_sans_are_ip_addresses(self, ca_dir: Path) -> None:
        cert = pki.load_cert(pki.issue(ca_dir, "vip", ["198.18.0.100", "::1"]).cert)
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert set(ext.get_values_for_type(x509.IPAddress)) == {
            ipaddress.ip_address("198.18.0.100"),
            ipaddress.ip_address("::1"),
        }

    def test_reissue_keeps_a_matching_certificate(self, ca_dir: Path) -> None:
        first = pki.issue(ca_dir, "node-a", ["198.18.0.1"])
        before = first.cert.read_bytes()
        again = pki.issue(ca_dir, "node-a", ["198.18.0.1"])
        assert not again.created
        assert again.cert.read_bytes() == before

    def test_changed_sans_reissue(self, ca_dir: Path) -> None:
        pki.issue(ca_dir, "node-a", ["198.18.0.1"])
        again = pki.issue(ca_dir, "node-a", ["198.18.0.2"])
        assert again.created
        assert _sans(pki.load_cert(again.cert)) == {"198.18.0.2"}

    def test_new_ca_reissues(self, ca_dir: Path) -> None:
        """A certificate from a replaced CA is not kept."""
        pki.issue(ca_dir, "node-a")
        pki.init_ca(ca_dir, force=True)
        assert pki.issue(ca_dir, "node-a").created

    def test_out_directory(self, ca_dir: Path, tmp_path: Path) -> None:
        issued = pki.issue(ca_dir, "node-a", out=tmp_path / "node-a")
        assert issued.cert == tmp_path / "node-a" / "node-a.crt"
        assert issued.key.exists()

    @pytest.mark.parametrize("name", ["", "a b", "../x", "ca", "-x"])
    def test_bad_names_are_refused(self, ca_dir: Path, name: str) -> None:
        with pytest.raises(pki.PkiError, match="name"):
            pki.issue(ca_dir, name)

    @pytest.mark.parametrize("san", ["a b", "x..y", "", "-bad.example"])
    def test_bad_sans_are_refused(self, ca_dir: Path, san: str) -> None:
        with pytest.raises(pki.PkiError, match="subject alternative name"):
            pki.issue(ca_dir, "node-a", [san])


class TestCheckClientFiles:
    def test_good_files_pass(self, ca_dir: Path) -> None:
        issued = pki.issue(ca_dir, "alice", client=True)
        pki.check_client_files(ca_dir / "ca.crt", issued.cert, issued.key)

    def test_ca_only_passes(self, ca_dir: Path) -> None:
        pki.check_client_files(ca_dir / "ca.crt", None, None)

    def test_key_of_another_certificate(self, ca_dir: Path) -> None:
        alice = pki.issue(ca_dir, "alice", client=True)
        bob = pki.issue(ca_dir, "bob", client=True)
        with pytest.raises(pki.PkiError, match=r"bob\.key: this key does not belong"):
            pki.check_client_files(ca_dir / "ca.crt", alice.cert, bob.key)

    def test_cert_without_key(self, ca_dir: Path) -> None:
        alice = pki.issue(ca_dir, "alice", client=True)
        with pytest.raises(pki.PkiError, match="give both or neither"):
            pki.check_client_files(ca_dir / "ca.crt", alice.cert, None)

    def test_not_a_certificate(self, ca_dir: Path, tmp_path: Path) -> None:
        bogus = tmp_path / "bogus.crt"
        bogus.write_text("hello\n")
        with pytest.raises(pki.PkiError, match=r"bogus\.crt: not a PEM certificate"):
            pki.check_client_files(bogus, None, None)

    def test_missing_file(self, tmp_path: Path) -> None:
        with pytest.raises(pki.PkiError, match=r"nope\.crt: no such file"):
            pki.check_client_files(tmp_path / "nope.crt", None, None)


class TestPeerCa:
    def test_peer_certificates_come_from_their_own_ca(self, ca_dir: Path) -> None:
        """A member's peer certificate chains to the peer CA only; a client certificate of the
        cluster CA does not chain to the peer CA, so etcd's peer port refuses it."""
        pki.init_ca(ca_dir, ca=pki.PEER_CA, common_name="peer CA")
        peer = pki.load_cert(pki.issue(ca_dir, "etcd1-peer", ["198.18.0.11"], ca=pki.PEER_CA).cert)
        client = pki.load_cert(pki.issue(ca_dir, "agent-node1", client=True).cert)
        peer_ca, _ = pki.load_ca(ca_dir, pki.PEER_CA)
        cluster_ca, _ = pki.load_ca(ca_dir)
        peer.verify_directly_issued_by(peer_ca)
        with pytest.raises((ValueError, InvalidSignature)):
            client.verify_directly_issued_by(peer_ca)
        with pytest.raises((ValueError, InvalidSignature)):
            peer.verify_directly_issued_by(cluster_ca)

    def test_missing_peer_ca_names_the_fix(self, ca_dir: Path) -> None:
        with pytest.raises(pki.PkiError, match=r"no etcd peer CA here .*--peer"):
            pki.issue(ca_dir, "etcd1-peer", ca=pki.PEER_CA)


class TestLifetimes:
    def test_leaves_are_short_and_staggered(self, ca_dir: Path) -> None:
        """Leaves issued in one run live at most LEAF_DAYS and do not all expire together."""
        ends = set()
        for i in range(8):
            cert = pki.load_cert(pki.issue(ca_dir, f"n{i}", client=True).cert)
            lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
            assert pki.LEAF_DAYS - pki.STAGGER_DAYS <= lifetime.days <= pki.LEAF_DAYS
            ends.add(cert.not_valid_after_utc.date())
        assert len(ends) > 1


class TestRevoke:
    def test_init_writes_an_empty_crl(self, ca_dir: Path) -> None:
        """etcd's --client-crl-file must exist from the start: init writes an empty CRL."""
        crl = x509.load_pem_x509_crl((ca_dir / "ca.crl").read_bytes())
        ca, _ = pki.load_ca(ca_dir)
        assert crl.is_signature_valid(ca.public_key())
        assert len(crl) == 0

    def test_kept_ca_gains_a_crl(self, ca_dir: Path) -> None:
        (ca_dir / "ca.crl").unlink()
        pki.init_ca(ca_dir)
        assert pki.revoked_serials(ca_dir) == []

    def test_revoked_serials_accumulate(self, ca_dir: Path) -> None:
        a = pki.issue(ca_dir, "a", client=True).cert
        b = pki.issue(ca_dir, "b", client=True).cert
        assert pki.revoke(ca_dir, a)[1]
        assert pki.revoke(ca_dir, b)[1]
        assert not pki.revoke(ca_dir, a)[1]
        serials = {pki.load_cert(p).serial_number for p in (a, b)}
        assert set(pki.revoked_serials(ca_dir)) == serials
        crl = x509.load_pem_x509_crl((ca_dir / "ca.crl").read_bytes())
        ca, _ = pki.load_ca(ca_dir)
        assert crl.is_signature_valid(ca.public_key())
