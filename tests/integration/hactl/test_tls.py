"""mTLS etcd made from `hactl certs`: the right client certificate works, others are refused."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from haproxy_py.hactl.cli import cli
from haproxy_py.hactl.errors import EXIT_OK, EXIT_UNREACHABLE
from tests.support.etcd import EtcdCluster, EtcdTLS


def _hactl(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def _certs(tmp_path: Path) -> tuple[Path, Path]:
    """The cluster PKI and a second, unrelated one, both made with `hactl certs`."""
    ours, other = tmp_path / "pki", tmp_path / "other-pki"
    for command in (
        ["certs", "init", "--out", str(ours)],
        ["certs", "issue", "--ca", str(ours), "etcd-0", "--san", "127.0.0.1,localhost"],
        ["certs", "issue", "--ca", str(ours), "operator", "--client"],
        ["certs", "init", "--out", str(other), "--name", "some other CA"],
        ["certs", "issue", "--ca", str(other), "intruder", "--client"],
        ["certs", "issue", "--ca", str(other), "etcd-0", "--san", "127.0.0.1"],
    ):
        result = _hactl(*command)
        assert result.exit_code == EXIT_OK, result.output
    return ours, other


@pytest.fixture
def tls_etcd(tmp_path: Path) -> Iterator[tuple[EtcdCluster, Path, Path]]:
    ours, other = _certs(tmp_path)
    tls = EtcdTLS(
        ca=ours / "ca.crt",
        server_cert=ours / "etcd-0.crt",
        server_key=ours / "etcd-0.key",
        client_cert=ours / "operator.crt",
        client_key=ours / "operator.key",
    )
    with EtcdCluster.start(size=1, tls=tls) as etcd:
        yield etcd, ours, other


def _status(etcd: EtcdCluster, *tls: str) -> Result:
    return _hactl("--etcd", f"https://{etcd.endpoints[0]}", "--cluster", "hh-tls", *tls, "status")


def test_right_client_certificate_works(tls_etcd: tuple[EtcdCluster, Path, Path]) -> None:
    etcd, ours, _ = tls_etcd
    result = _status(
        etcd,
        "--cacert", str(ours / "ca.crt"),
        "--cert", str(ours / "operator.crt"),
        "--key", str(ours / "operator.key"),
    )  # fmt: skip
    assert result.exit_code == EXIT_OK, result.output
    assert "Cluster: hh-tls" in result.stdout


def test_no_client_certificate_is_refused(tls_etcd: tuple[EtcdCluster, Path, Path]) -> None:
    etcd, ours, _ = tls_etcd
    result = _status(etcd, "--cacert", str(ours / "ca.crt"))
    assert result.exit_code == EXIT_UNREACHABLE
    assert result.stderr.startswith(
        "hactl: TLS: etcd requires a client certificate and none was given "
        "([etcd] cert and key; hactl --cert/--key)"
    )
    assert result.stderr.count("\n") == 1


def test_certificate_from_another_ca_is_refused(tls_etcd: tuple[EtcdCluster, Path, Path]) -> None:
    etcd, ours, other = tls_etcd
    result = _status(
        etcd,
        "--cacert", str(ours / "ca.crt"),
        "--cert", str(other / "intruder.crt"),
        "--key", str(other / "intruder.key"),
    )  # fmt: skip
    assert result.exit_code == EXIT_UNREACHABLE
    assert result.stderr.startswith(
        f"hactl: TLS: etcd rejected client certificate {other / 'intruder.crt'}"
    )


def test_server_not_signed_by_our_ca(tls_etcd: tuple[EtcdCluster, Path, Path]) -> None:
    """Trusting the wrong CA: the check that failed (server verification) is named."""
    etcd, ours, other = tls_etcd
    result = _status(
        etcd,
        "--cacert", str(other / "ca.crt"),
        "--cert", str(ours / "operator.crt"),
        "--key", str(ours / "operator.key"),
    )  # fmt: skip
    assert result.exit_code == EXIT_UNREACHABLE
    assert "TLS: etcd's server certificate failed verification" in result.stderr
    assert str(other / "ca.crt") in result.stderr


def test_plain_client_against_tls_etcd(tls_etcd: tuple[EtcdCluster, Path, Path]) -> None:
    etcd, _, _ = tls_etcd
    result = _hactl("--etcd", etcd.endpoints[0], "--cluster", "hh-tls", "status")
    assert result.exit_code == EXIT_UNREACHABLE
    assert "etcd may require TLS" in result.stderr
