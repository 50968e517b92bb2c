"""Where hactl finds etcd: options over environment over files, every mistake named."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from haproxy_py import pki
from haproxy_py.hactl.cli import cli
from haproxy_py.hactl.connection import OPTIONS_SOURCE, Options, resolve
from haproxy_py.hactl.errors import EXIT_CONFIG, EXIT_UNREACHABLE, ConfigProblem


@pytest.fixture
def certs(tmp_path: Path) -> Path:
    directory = tmp_path / "pki"
    pki.init_ca(directory)
    pki.issue(directory, "alice", client=True)
    pki.issue(directory, "bob", client=True)
    return directory


def _context(tmp_path: Path, text: str, name: str = "context.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


class TestResolve:
    def test_defaults_without_anything(self) -> None:
        """No option, no file: the default cluster on etcd 127.0.0.1:2379, plain."""
        connection = resolve(Options(), environ={})
        assert connection.cluster == "default"
        assert connection.etcd.endpoints == ("127.0.0.1:2379",)
        assert not connection.etcd.tls

    def test_context_file_from_environment(self, tmp_path: Path, certs: Path) -> None:
        """$HACTL_CONTEXT names a context file; its relative paths are relative to it."""
        path = _context(
            tmp_path,
            '[cluster]\nname = "lab"\n'
            '[etcd]\nendpoints = ["https://127.0.0.1:4001", "127.0.0.1:4002"]\n'
            'cacert = "pki/ca.crt"\ncert = "pki/alice.crt"\nkey = "pki/alice.key"\n',
        )
        connection = resolve(Options(), environ={"HACTL_CONTEXT": str(path)})
        assert connection.cluster == "lab"
        assert connection.etcd.endpoints == ("127.0.0.1:4001", "127.0.0.1:4002")
        assert connection.etcd.cacert == certs / "ca.crt"
        assert connection.etcd.cert == certs / "alice.crt"
        assert connection.source == str(path)

    def test_relative_config_path_from_another_directory(
        self, tmp_path: Path, certs: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """`--config pki/hactl.toml` run from the file's grandparent finds pki/ca.crt once."""
        _context(
            certs,
            '[etcd]\nendpoints = ["127.0.0.1:4001"]\n'
            'cacert = "ca.crt"\ncert = "alice.crt"\nkey = "alice.key"\n',
            name="hactl.toml",
        )
        monkeypatch.chdir(tmp_path)
        connection = resolve(Options(config="pki/hactl.toml", etcd="127.0.0.1:4002"), environ={})
        assert connection.etcd.cacert == certs / "ca.crt"
        assert connection.etcd.key == certs / "alice.key"

    def test_options_override_the_file(self, tmp_path: Path, certs: Path) -> None:
        """An option replaces the file's setting and keeps the rest of the file."""
        path = _context(
            tmp_path,
            '[cluster]\nname = "lab"\n[etcd]\nendpoints = ["127.0.0.1:4001"]\n'
            'cacert = "pki/ca.crt"\ncert = "pki/alice.crt"\nkey = "pki/alice.key"\n',
        )
        options = Options(
            config=str(path),
            cluster="prod",
            etcd="https://127.0.0.1:5001",
            cert=str(certs / "bob.crt"),
            key=str(certs / "bob.key"),
            etcd_timeout=2.5,
        )
        connection = resolve(options, environ={})
        assert connection.cluster == "prod"
        assert connection.etcd.endpoints == ("127.0.0.1:5001",)
        assert connection.etcd.cacert == certs / "ca.crt"
        assert connection.etcd.cert == certs / "bob.crt"
        assert connection.etcd.timeout == 2.5
        assert connection.source == f"{OPTIONS_SOURCE} over {path}"

    def test_plain_endpoint_over_a_tls_file_drops_tls(self, tmp_path: Path, certs: Path) -> None:
        path = _context(tmp_path, '[etcd]\nendpoints = ["127.0.0.1:4001"]\ncacert = "pki/ca.crt"\n')
        connection = resolve(Options(config=str(path), etcd="http://127.0.0.1:4002"), environ={})
        assert not connection.etcd.tls

    def test_node_config_is_a_context_file(self, tmp_path: Path) -> None:
        """A daemon's full node config works as it is."""
        path = _context(
            tmp_path,
            '[node]\nname = "node-a"\n[cluster]\nname = "edge"\nvips = ["198.18.0.100"]\n'
            '[etcd]\nendpoints = ["127.0.0.1:4001"]\n[logging]\n',
        )
        assert resolve(Options(config=str(path)), environ={}).cluster == "edge"

    def test_missing_config_file(self, tmp_path: Path) -> None:
        with pytest.raises(ConfigProblem, match=r"nope\.toml: no such file"):
            resolve(Options(config=str(tmp_path / "nope.toml")), environ={})

    def test_bad_value_names_file_and_key(self, tmp_path: Path) -> None:
        path = _context(tmp_path, '[etcd]\nendpoints = ["no-port"]\n')
        with pytest.raises(ConfigProblem, match=r"context\.toml: etcd\.endpoints\[0\]"):
            resolve(Options(config=str(path)), environ={})

    def test_https_without_cacert(self) -> None:
        with pytest.raises(ConfigProblem, match="set cacert for https"):
            resolve(Options(etcd="https://127.0.0.1:4001"), environ={})

    def test_cert_without_key(self, certs: Path) -> None:
        options = Options(cacert=str(certs / "ca.crt"), cert=str(certs / "alice.crt"))
        with pytest.raises(ConfigProblem, match="cert and key must be given together"):
            resolve(options, environ={})

    def test_key_of_another_certificate(self, certs: Path) -> None:
        """A key that does not match the certificate is named before any dialling."""
        options = Options(
            etcd="https://127.0.0.1:4001",
            cacert=str(certs / "ca.crt"),
            cert=str(certs / "alice.crt"),
            key=str(certs / "bob.key"),
        )
        with pytest.raises(ConfigProblem, match=r"TLS: .*bob\.key: this key does not belong"):
            resolve(options, environ={})

    def test_bad_cluster_name(self) -> None:
        with pytest.raises(ConfigProblem, match=r"cluster\.name"):
            resolve(Options(cluster="a/b"), environ={})


class TestCommandLine:
    def test_environment_variables_are_used(self) -> None:
        """HACTL_ETCD and HACTL_ETCD_TIMEOUT reach the store (the error names them)."""
        result = CliRunner().invoke(
            cli,
            ["status"],
            env={"HACTL_ETCD": "127.0.0.1:1", "HACTL_ETCD_TIMEOUT": "0.5"},
        )
        assert result.exit_code == EXIT_UNREACHABLE, result.output
        assert "etcd unreachable (endpoints 127.0.0.1:1; timeout 0.5 s)" in result.output
        assert "Traceback" not in result.output

    def test_option_beats_environment(self) -> None:
        result = CliRunner().invoke(
            cli,
            ["--etcd", "127.0.0.1:2", "status"],
            env={"HACTL_ETCD": "127.0.0.1:1"},
        )
        assert result.exit_code == EXIT_UNREACHABLE
        assert "endpoints 127.0.0.1:2;" in result.output

    def test_config_problem_is_one_line_and_exit_3(self, tmp_path: Path) -> None:
        result = CliRunner().invoke(cli, ["--config", str(tmp_path / "x.toml"), "status"])
        assert result.exit_code == EXIT_CONFIG
        assert result.output == f"hactl: {tmp_path / 'x.toml'}: no such file\n"
