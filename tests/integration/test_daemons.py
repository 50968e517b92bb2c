"""The three daemons keep one convention (`haproxy_py.daemon`), run as their installed commands.

Exit 2 and one line for a config mistake, `--check-config` on each, exit 1
and one line when they cannot start, `[logging]` honoured, and the same
`starting` / `ready` / `stopped` lines with `daemon=<name>`.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.etcd import EtcdCluster, free_ports
from tests.support.wait import eventually

BIN = Path(sys.executable).parent
ARGS = {"haproxy-py": ["run"], "ha-agent": [], "ha-controller": []}


def node_file(
    path: Path, etcd: str = "127.0.0.1:1", port: int = 0, metrics: int = 0, logging: str = ""
) -> Path:
    """One node's file that every daemon accepts (etcd, interface and ports as given)."""
    path.write_text(
        f"""
[node]
name = "n1"
interface = "hapy-nonexistent0"

[cluster]
name = "daemons"
vips = ["198.18.200.1"]

[etcd]
endpoints = ["{etcd}"]
timeout = 0.5

[controller]
metrics = "127.0.0.1:{metrics}"

[admin]
bind = "127.0.0.1:0"

[[listeners]]
name = "web"
bind = "127.0.0.1:{port}"

[[routes]]
path_prefix = "/"
backend = "app"

[backends.app]
servers = ["127.0.0.1:9"]

[logging]
{logging}
"""
    )
    return path


def command(name: str, config: Path, *extra: str) -> list[str]:
    return [str(BIN / name), *ARGS[name], "--config", str(config), *extra]


def run(name: str, config: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command(name, config, *extra), capture_output=True, text=True, timeout=60)


def one_line(text: str) -> str:
    assert "Traceback" not in text, text
    lines = text.strip().splitlines()
    assert len(lines) == 1, text
    return lines[0]


@pytest.mark.parametrize("name", ARGS)
class TestEveryDaemon:
    def test_a_config_mistake_exits_2_in_one_line(self, name: str, tmp_path: Path) -> None:
        config = node_file(tmp_path / "node.toml", logging='level = "loud"')
        result = run(name, config)
        assert result.returncode == 2, result.stderr
        assert one_line(result.stderr).startswith(f"{name}: {config}: logging.level: expected")

    def test_a_missing_file_exits_2(self, name: str, tmp_path: Path) -> None:
        result = run(name, tmp_path / "none.toml")
        assert result.returncode == 2
        assert one_line(result.stderr) == f"{name}: {tmp_path / 'none.toml'}: no such file"

    def test_check_config_checks_and_exits_0(self, name: str, tmp_path: Path) -> None:
        config = node_file(tmp_path / "node.toml")
        result = run(name, config, "--check-config")
        assert (result.returncode, result.stdout) == (0, f"{config}: ok\n"), result.stderr
        broken = node_file(tmp_path / "broken.toml", logging='format = "xml"')
        assert run(name, broken, "--check-config").returncode == 2


@pytest.fixture
def taken_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("haproxy-py", "cannot start: cannot listen on 127.0.0.1:{port}: Address already in use"),
        ("ha-controller", "cannot serve metrics on 127.0.0.1:{port}: "),
        ("ha-agent", ""),  # no such interface, or (not root) missing capabilities
    ],
)
def test_a_start_failure_exits_1_in_one_line(
    name: str, why: str, tmp_path: Path, taken_port: int
) -> None:
    config = node_file(tmp_path / "node.toml", port=taken_port, metrics=taken_port)
    result = run(name, config)
    assert result.returncode == 1, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"{name}: ") and "Traceback" not in result.stderr
    assert why.format(port=taken_port) in last


def events(stderr: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]


def run_until_ready(argv: list[str], ready: str) -> subprocess.CompletedProcess[str]:
    """Start the daemon, wait for `ready` in its log file, SIGTERM it, return its output."""
    log = Path(argv[argv.index("--config") + 1]).with_suffix(".log")
    with log.open("w") as sink:
        process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=sink, text=True)
        try:
            eventually(lambda: ready in log.read_text(), within=30, what=f"{ready!r} logged")
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=30)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    return subprocess.CompletedProcess(argv, process.returncode, "", log.read_text())


def test_the_proxy_logs_as_the_file_says(tmp_path: Path) -> None:
    """`haproxy-py run` takes level and format from [logging] (it used to ignore them)."""
    (port,) = free_ports(1)
    config = node_file(tmp_path / "node.toml", port=port, logging='format = "json"')
    result = run_until_ready(command("haproxy-py", config), '"ready"')
    assert result.returncode == 0
    lines = events(result.stderr)
    assert len(lines) == len(result.stderr.strip().splitlines()), "a line that is not JSON"
    mine = [(e["event"], e.get("daemon")) for e in lines if e.get("daemon")]
    assert mine == [(e, "haproxy-py") for e in ("starting", "ready", "stopped")]

    quiet = node_file(tmp_path / "quiet.toml", port=port, logging='level = "warning"')
    process = subprocess.Popen(
        command("haproxy-py", quiet), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    try:
        eventually(lambda: _accepts(port), within=30, what="the proxy listening")
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0
    assert err == "", "info lines logged at level warning"
    override = run_until_ready(command("haproxy-py", quiet, "--log-level", "info"), '"ready"')
    assert override.returncode == 0


def test_the_controller_logs_starting_ready_stopped(tmp_path: Path, etcd: EtcdCluster) -> None:
    config = node_file(tmp_path / "node.toml", etcd.endpoints[0], logging='format = "json"')
    result = run_until_ready(command("ha-controller", config), '"ready"')
    assert result.returncode == 0, result.stderr
    mine = [(e["event"], e.get("daemon")) for e in events(result.stderr) if e.get("daemon")]
    assert mine == [(e, "ha-controller") for e in ("starting", "ready", "stopped")]


def _accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True
