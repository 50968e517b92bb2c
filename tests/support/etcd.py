"""Real etcd members for tests: one or three, on loopback free ports, with temp data dirs.

Members run /usr/bin/etcd with `--heartbeat-interval=50 --election-timeout=500`
(healthy in ~0.3 s, 1 s minimum lease TTL), hourly-retention auto-compaction and an
explicit backend quota (`quota_bytes`, small enough that a test can fill it and see
the NOSPACE alarm). Every process started here is
reaped by this process (kill + wait by PID) so none is left as a zombie, and
every data directory is removed, also when a test fails.

    with EtcdCluster.start(size=3) as cluster:
        cluster.endpoints            # ["127.0.0.1:41234", ...]
        cluster.members[0].kill()    # SIGKILL + wait
        cluster.members[0].restart() # same data dir, waits until healthy
        cluster.members[1].freeze()  # SIGSTOP; thaw() sends SIGCONT
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.support.wait import eventually

ETCD_BINARY = os.environ.get("HAPROXY_PY_TEST_ETCD", "/usr/bin/etcd")
START_TIMEOUT = 30.0  # generous: the machine is shared; a fresh member is usually up in 0.3 s
QUOTA_BYTES = 256 * 1024 * 1024  # far above what a test writes, far below the 2 GiB default


@dataclass(frozen=True)
class EtcdTLS:
    """Files for a TLS-serving member: clients must present a certificate signed by `ca`.

    `client_cert`/`client_key` are what this module uses to poll `/health`.
    """

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    crl: Path | None = None  # --client-crl-file


def free_ports(count: int) -> list[int]:
    """Ports the kernel says are free on 127.0.0.1 (held together so they are distinct)."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


class EtcdMember:
    """One etcd process; its data dir survives stop/kill so that `restart()` keeps the data."""

    def __init__(
        self,
        name: str,
        client_port: int,
        peer_port: int,
        data_dir: Path,
        initial_cluster: str,
        tls: EtcdTLS | None = None,
        host: str = "127.0.0.1",
        quota_bytes: int = QUOTA_BYTES,
    ) -> None:
        self.name = name
        self.host = host  # where clients connect; peers always talk over loopback
        self.client_port = client_port
        self.peer_port = peer_port
        self.data_dir = data_dir
        self.initial_cluster = initial_cluster
        self.tls = tls
        self.quota_bytes = quota_bytes
        self.log_path = data_dir.parent / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.frozen = False

    @property
    def scheme(self) -> str:
        return "https" if self.tls else "http"

    @property
    def endpoint(self) -> str:
        """`host:port` as the store's config takes it."""
        return f"{self.host}:{self.client_port}"

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host}:{self.client_port}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def _command(self) -> list[str]:
        peer = f"http://127.0.0.1:{self.peer_port}"
        command = [
            ETCD_BINARY,
            f"--name={self.name}",
            f"--data-dir={self.data_dir}",
            f"--listen-client-urls={self.url}",
            f"--advertise-client-urls={self.url}",
            f"--listen-peer-urls={peer}",
            f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster={self.initial_cluster}",
            "--initial-cluster-state=new",
            "--initial-cluster-token=haproxy-py-test",
            "--heartbeat-interval=50",
            "--election-timeout=500",
            "--auto-compaction-mode=periodic",
            "--auto-compaction-retention=1h",
            f"--quota-backend-bytes={self.quota_bytes}",
            "--logger=zap",
            "--log-level=warn",
        ]
        if self.tls:
            command += [
                f"--trusted-ca-file={self.tls.ca}",
                f"--cert-file={self.tls.server_cert}",
                f"--key-file={self.tls.server_key}",
                "--client-cert-auth",
            ]
            if self.tls.crl is not None:
                command.append(f"--client-crl-file={self.tls.crl}")
        return command

    def spawn(self) -> None:
        """Start the process without waiting for health (a cluster starts all members first)."""
        if self.proc is not None:
            raise RuntimeError(f"etcd member {self.name} already running (pid {self.pid})")
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self._command(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        self.frozen = False

    def _ssl_context(self) -> ssl.SSLContext | None:
        if not self.tls:
            return None
        context = ssl.create_default_context(cafile=str(self.tls.ca))
        context.load_cert_chain(str(self.tls.client_cert), str(self.tls.client_key))
        return context

    def healthy(self) -> bool:
        """True when `/health` answers `"health": "true"` (needs quorum in a cluster)."""
        try:
            with urllib.request.urlopen(
                f"{self.url}/health", timeout=1.0, context=self._ssl_context()
            ) as response:
                return bool(json.loads(response.read()).get("health") == "true")
        except (OSError, ValueError, urllib.error.URLError):
            return False

    def wait_healthy(self, timeout: float = START_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                raise RuntimeError(f"etcd member {self.name} exited; log:\n{self.log_tail()}")
            if self.healthy():
                return
            time.sleep(0.05)
        raise RuntimeError(
            f"etcd member {self.name} not healthy after {timeout} s; log:\n{self.log_tail()}"
        )

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def _signal_and_reap(self, signum: int) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            if self.frozen and signum != signal.SIGKILL:
                self.proc.send_signal(signal.SIGCONT)
            self.proc.send_signal(signum)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        self.frozen = False

    def kill(self) -> None:
        """SIGKILL and reap: a crash, as far as the cluster can tell."""
        self._signal_and_reap(signal.SIGKILL)

    def stop(self) -> None:
        """SIGTERM and reap: a clean shutdown."""
        self._signal_and_reap(signal.SIGTERM)

    def freeze(self) -> None:
        """SIGSTOP: the member keeps its sockets open but answers nothing."""
        if self.proc is None:
            raise RuntimeError(f"etcd member {self.name} is not running")
        self.proc.send_signal(signal.SIGSTOP)
        self.frozen = True
        # The stop reaches each thread when it next runs: on a loaded host a request sent
        # right after kill() could still be answered. Return once every thread is stopped.
        pid = self.proc.pid
        eventually(lambda: _all_stopped(pid), 10, f"etcd member {self.name} to stop", every=0.005)

    def thaw(self) -> None:
        if self.proc is not None and self.frozen:
            self.proc.send_signal(signal.SIGCONT)
        self.frozen = False

    def restart(self, wait: bool = True) -> None:
        """Kill (if running) and start again on the same data dir and ports."""
        self.kill()
        self.spawn()
        if wait:
            self.wait_healthy()


class EtcdCluster:
    """One or more members forming one etcd cluster, in a temp directory removed on close."""

    def __init__(self, members: list[EtcdMember], root: Path) -> None:
        self.members = members
        self.root = root

    @property
    def endpoints(self) -> list[str]:
        return [member.endpoint for member in self.members]

    @classmethod
    @contextmanager
    def start(
        cls, size: int = 1, tls: EtcdTLS | None = None, quota_bytes: int = QUOTA_BYTES
    ) -> Iterator[EtcdCluster]:
        root = Path(tempfile.mkdtemp(prefix="hc-etcd-"))
        with ExitStack() as cleanup:
            cleanup.callback(shutil.rmtree, root, True)
            ports = free_ports(2 * size)
            names = [f"m{i}" for i in range(size)]
            initial = ",".join(
                f"{name}=http://127.0.0.1:{ports[2 * i + 1]}" for i, name in enumerate(names)
            )
            members = [
                EtcdMember(
                    name,
                    ports[2 * i],
                    ports[2 * i + 1],
                    root / name,
                    initial,
                    tls,
                    quota_bytes=quota_bytes,
                )
                for i, name in enumerate(names)
            ]
            cluster = cls(members, root)
            cleanup.callback(cluster.close)
            for member in members:
                member.spawn()
            for member in members:
                member.wait_healthy()
            yield cluster

    def close(self) -> None:
        for member in self.members:
            member.kill()


def _all_stopped(pid: int) -> bool:
    """Every thread of `pid` is stopped (T) or gone, as /proc shows it."""
    states = []
    for stat in Path(f"/proc/{pid}/task").glob("*/stat"):
        try:
            states.append(stat.read_text().rsplit(")", 1)[1].split()[0])
        except (OSError, IndexError):
            continue  # a thread that just ended
    return bool(states) and all(state in "TtZX" for state in states)  # Z, X: thread exiting
