"""gRPC's failure text becomes the store's own words: which certificate failed, or what
happened to the connection; nothing of gRPC's wording is passed on."""

from __future__ import annotations

from pathlib import Path

from haproxy_py.cluster.config import EtcdConfig
from haproxy_py.cluster.storeerrors import plain_words, tls_failure, transient

TLS = EtcdConfig(("127.0.0.1:1",), 1.0, Path("/c/ca.crt"), Path("/c/me.crt"), Path("/c/me.key"))
PLAIN = EtcdConfig(("127.0.0.1:1",))
REFUSED = (
    "failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:1: "
    "Failed to connect to remote host: Connection refused"
)


def test_server_not_trusted() -> None:
    text = tls_failure("x: CERTIFICATE_VERIFY_FAILED: unable to get local issuer", TLS)
    assert text is not None
    assert text.startswith("etcd's server certificate failed verification")
    assert "/c/ca.crt" in text


def test_client_certificate_rejected() -> None:
    text = tls_failure("x: Unwrap failed (TSI_DATA_CORRUPTED)", TLS)
    assert text is not None and text.startswith("etcd rejected client certificate /c/me.crt")


def test_no_client_certificate() -> None:
    config = EtcdConfig(("127.0.0.1:1",), 1.0, Path("/c/ca.crt"))
    text = tls_failure("x: Unwrap failed (TSI_DATA_CORRUPTED)", config)
    assert text is not None and "requires a client certificate and none was given" in text


def test_plain_client_against_tls_server() -> None:
    assert tls_failure("x: Socket closed", PLAIN) is None
    assert "etcd may require TLS" in plain_words("x: Socket closed", PLAIN)
    assert "may require TLS" not in plain_words("x: Socket closed", TLS)


def test_connection_failures_in_our_words() -> None:
    assert tls_failure(REFUSED, TLS) is None
    assert plain_words(REFUSED, TLS) == "connection refused"
    assert plain_words("errors resolving x: Domain name not found", TLS) == "host name not found"
    assert plain_words("UNKNOWN: something gRPC-specific", TLS) == "cannot connect"


def test_etcds_own_words_stay() -> None:
    detail = "StatusCode.PERMISSION_DENIED: etcdserver: permission denied\ndebug text"
    assert plain_words(detail, TLS) == "etcdserver: permission denied"


def test_a_cluster_without_a_leader_is_not_now_rather_than_no() -> None:
    """A member that answers while the cluster cannot commit (its leader frozen) is an
    outage to wait out, as a silent member is; a refusal is not."""
    assert transient("context deadline exceeded")
    assert transient("etcdserver: leader changed")
    assert transient("etcdserver: request timed out, possibly due to previous leader failure")
    assert not transient("etcdserver: permission denied")
    assert not transient("etcdserver: requested lease not found")
