"""The CLI shell without etcd: certs, version, completion, usage errors."""

from __future__ import annotations

import stat
from pathlib import Path

from click.testing import CliRunner, Result
from cryptography import x509

from haproxy_py import __version__, pki
from haproxy_py.hactl.cli import cli
from haproxy_py.hactl.errors import EXIT_CONFIG, EXIT_OK, EXIT_USAGE


def _hactl(*args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False, prog_name="hactl")


class TestCerts:
    def test_init_then_keep(self, tmp_path: Path) -> None:
        out = tmp_path / "pki"
        first = _hactl("certs", "init", "--out", str(out))
        assert first.exit_code == EXIT_OK, first.output
        assert first.stdout.startswith(f"created CA {out / 'ca.crt'}")
        second = _hactl("certs", "init", "--out", str(out))
        assert second.stdout.startswith("kept existing CA")
        assert stat.S_IMODE((out / "ca.key").stat().st_mode) == 0o600

    def test_issue_server_and_client(self, tmp_path: Path) -> None:
        out = tmp_path / "pki"
        _hactl("certs", "init", "--out", str(out))
        server = _hactl(
            "certs", "issue", "--ca", str(out), "etcd-0",
            "--san", "127.0.0.1,localhost", "--san", "198.18.0.2",
        )  # fmt: skip
        assert server.exit_code == EXIT_OK, server.output
        assert server.stdout.startswith("issued server/peer certificate")
        cert = pki.load_cert(out / "etcd-0.crt")
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert len(sans) == 3
        client = _hactl("certs", "issue", "--ca", str(out), "alice", "--client")
        assert client.stdout.startswith("issued client certificate")
        again = _hactl("certs", "issue", "--ca", str(out), "alice", "--client")
        assert again.stdout.startswith("kept valid client certificate")

    def test_missing_ca_is_one_line(self, tmp_path: Path) -> None:
        result = _hactl("certs", "issue", "--ca", str(tmp_path), "alice")
        assert result.exit_code == EXIT_CONFIG
        assert result.output == (
            f"hactl: {tmp_path}: no cluster CA here (make one: hactl certs init --out DIR)\n"
        )

    def test_bad_san(self, tmp_path: Path) -> None:
        _hactl("certs", "init", "--out", str(tmp_path))
        result = _hactl("certs", "issue", "--ca", str(tmp_path), "x", "--san", "no way")
        assert result.exit_code == EXIT_CONFIG
        assert "subject alternative name 'no way'" in result.output

    def test_revoke_by_name_then_again(self, tmp_path: Path) -> None:
        """`revoke NAME` puts the certificate's serial on ca.crl; a second time says so."""
        _hactl("certs", "init", "--out", str(tmp_path))
        _hactl("certs", "issue", "--ca", str(tmp_path), "agent-node1", "--client")
        first = _hactl("certs", "revoke", "--ca", str(tmp_path), "agent-node1")
        assert first.exit_code == EXIT_OK, first.output
        assert first.stdout.startswith(f"revoked {tmp_path / 'agent-node1.crt'}")
        serial = pki.load_cert(tmp_path / "agent-node1.crt").serial_number
        assert pki.revoked_serials(tmp_path) == [serial]
        again = _hactl("certs", "revoke", "--ca", str(tmp_path), "agent-node1")
        assert again.stdout.startswith("already revoked:")
        assert pki.revoked_serials(tmp_path) == [serial]

    def test_revoke_a_stranger_is_one_line(self, tmp_path: Path) -> None:
        _hactl("certs", "init", "--out", str(tmp_path / "a"))
        _hactl("certs", "init", "--out", str(tmp_path / "b"))
        _hactl("certs", "issue", "--ca", str(tmp_path / "b"), "x", "--client")
        cert = str(tmp_path / "b" / "x.crt")
        result = _hactl("certs", "revoke", "--ca", str(tmp_path / "a"), cert)
        assert result.exit_code == EXIT_CONFIG
        assert result.output == f"hactl: {cert}: not issued by {tmp_path / 'a' / 'ca.crt'}\n"


def test_version() -> None:
    assert _hactl("version").stdout == f"hactl {__version__}\n"
    assert __version__ in _hactl("--version").stdout


def test_completion_script() -> None:
    """`hactl completion bash` prints click's completion script for hactl."""
    result = _hactl("completion", "bash")
    assert result.exit_code == EXIT_OK
    assert "_HACTL_COMPLETE=bash_complete" in result.stdout


def test_completion_completes_commands() -> None:
    result = _hactl(
        env={"_HACTL_COMPLETE": "bash_complete", "COMP_WORDS": "hactl fa", "COMP_CWORD": "1"}
    )
    assert "failover" in result.stdout


def test_usage_error_is_exit_2() -> None:
    result = _hactl("status", "-o", "yaml")
    assert result.exit_code == EXIT_USAGE
    assert "Invalid value for '-o'" in result.output


def test_lab_group_is_registered() -> None:
    assert "lab" in _hactl("--help").stdout
