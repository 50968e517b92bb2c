"""The four ways the load reaches the backend: direct, nginx, haproxy and haproxy-py.

`start()` brings a proxy up pinned to the proxy core and returns where to send
load and which PIDs to account; a target that cannot start raises TargetFailed
with a one-line reason, so the rest of the run goes on without it.
"""

from __future__ import annotations

import abc
import os
import resource
import shutil
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from bench import configs
from bench.procfs import children
from bench.procs import Spawned, StartError, free_port, spawn, wait_listening

PROXY_CPU = 1
HOST = "127.0.0.1"


class TargetFailed(Exception):
    """The target cannot be measured in this run (missing, bad config, failed smoke test)."""


@dataclass
class Running:
    address: str  # host:port the load generator connects to
    cpu_pids: list[int] = field(default_factory=list)  # processes whose CPU is the proxy's
    mem_pids: list[int] = field(default_factory=list)  # processes whose RSS is the proxy's
    procs: list[Spawned] = field(default_factory=list)
    admin: str = ""  # haproxy-py's admin API (host:port)

    def stop(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()


@dataclass(frozen=True)
class Target(abc.ABC):
    name: str
    tests: tuple[str, ...]  # the load tests it takes part in
    idle: bool  # whether it takes part in the idle-memory test
    workers: str = "1"  # worker processes: a number or "auto" (nginx and haproxy-py)
    cpus: str = str(PROXY_CPU)  # where it runs (taskset list): the proxy core, or all of them

    @abc.abstractmethod
    def start(self, backend: str, workdir: Path) -> Running:
        """Start the proxy in front of `backend` (host:port), ready for load."""


def fd_limit() -> int:
    """The open-file limit the proxies inherit (the harness raises it first)."""
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def _require(program: str) -> str:
    path = shutil.which(program)
    if path is None:
        raise TargetFailed(f"{program} is not installed (run `make bench`, which installs it)")
    return path


def _started(proc: Spawned, port: int) -> Running:
    try:
        wait_listening(proc, HOST, port)
    except StartError as exc:
        proc.stop()
        raise TargetFailed(str(exc)) from exc
    return Running(f"{HOST}:{port}", [proc.pid], [proc.pid], [proc])


@dataclass(frozen=True)
class Direct(Target):
    def start(self, backend: str, workdir: Path) -> Running:
        return Running(backend)


@dataclass(frozen=True)
class Nginx(Target):
    buffer_64k: bool = False

    def start(self, backend: str, workdir: Path) -> Running:
        nginx = _require("nginx")
        home = workdir / self.name
        home.mkdir(exist_ok=True)
        port = free_port()
        conf = home / "nginx.conf"
        conf.write_text(
            configs.nginx_conf(
                listen=port,
                backend=backend,
                workdir=home,
                buffer_64k=self.buffer_64k,
                fd_limit=fd_limit(),
                workers=self.workers,
            )
        )
        argv = [nginx, "-p", str(home), "-c", str(conf), "-e", str(home / "error.log")]
        running = _started(spawn(self.name, argv, self.cpus, workdir), port)
        master = running.procs[0]
        deadline = time.monotonic() + 10
        while not (workers := children(master.pid)) and time.monotonic() < deadline:
            time.sleep(0.05)
        if not workers:
            running.stop()
            raise TargetFailed(f"{self.name}: no worker process appeared under the master")
        running.cpu_pids = [master.pid, *workers]
        running.mem_pids = workers
        return running


@dataclass(frozen=True)
class Haproxy(Target):
    def start(self, backend: str, workdir: Path) -> Running:
        haproxy = _require("haproxy")
        port = free_port()
        cfg = workdir / f"{self.name}.cfg"
        cfg.write_text(configs.haproxy_cfg(listen=port, backend=backend, fd_limit=fd_limit()))
        return _started(
            spawn(self.name, [haproxy, "-db", "-f", str(cfg)], PROXY_CPU, workdir), port
        )


@dataclass(frozen=True)
class HaproxyPy(Target):
    """The proxy of this project, as an operator runs it: `haproxy-py run --config FILE`.

    `tree` runs another checkout's `haproxy_py` package with the same interpreter
    (`--baseline DIR`: before and after a change, measured in one run).
    """

    tree: str | None = None

    def start(self, backend: str, workdir: Path) -> Running:
        program = Path(sys.executable).with_name("haproxy-py")
        if not program.exists():
            raise TargetFailed(f"{program} is missing (install the project: pip install -e .)")
        port, admin = free_port(), free_port()
        conf = workdir / f"{self.name}.toml"
        conf.write_text(
            configs.haproxy_py_toml(
                listen=port, admin=admin, backend=backend, fd_limit=fd_limit(), workers=self.workers
            )
        )
        env = None if self.tree is None else {**os.environ, "PYTHONPATH": self.tree}
        try:
            check = subprocess.run(
                [str(program), "check-config", str(conf)],
                capture_output=True,
                text=True,
                timeout=60,
                env=env,
            )
        except subprocess.TimeoutExpired as exc:
            raise TargetFailed("haproxy-py check-config did not finish within 60 s") from exc
        if check.returncode != 0:
            reason = (check.stderr or check.stdout).strip().splitlines()
            raise TargetFailed(
                f"haproxy-py check-config failed: {reason[-1] if reason else check.returncode}"
            )
        argv = [str(program), "run", "--config", str(conf)]
        # Not from the checkout the harness runs in: `python -m` puts the working directory
        # first on the path, and a master without `-P` would start that tree's workers.
        proc = spawn(self.name, argv, self.cpus, workdir, env, cwd=workdir)
        running = _started(proc, port)
        running.admin = f"{HOST}:{admin}"
        # The master listens before its workers start; its admin API answers once they
        # all serve, and only then is the process tree (whose CPU and RSS count) complete.
        if not _answers(f"http://{running.admin}/healthz", 60.0):
            running.stop()
            raise TargetFailed(f"{self.name}: the admin API did not answer within 60 s")
        running.cpu_pids = running.mem_pids = _tree(proc.pid)
        return running


@dataclass(frozen=True)
class BareRelay(Target):
    """The floor under haproxy-py's relay: `bench/barerelay.py`, bytes relayed on uvloop."""

    def start(self, backend: str, workdir: Path) -> Running:
        port = free_port()
        argv = [sys.executable, str(Path(__file__).with_name("barerelay.py")), str(port), backend]
        return _started(spawn(self.name, argv, self.cpus, workdir), port)


def _answers(url: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status in (200, 503):
                    return True
        except OSError:
            pass
        time.sleep(0.1)
    return False


def _tree(pid: int) -> list[int]:
    """`pid` and its descendants (the master and its workers)."""
    pids = [pid]
    for child in children(pid):
        pids.extend(_tree(child))
    return pids


TARGETS: tuple[Target, ...] = (
    Direct("direct", ("ws-small", "ws-large", "http"), idle=False),
    Nginx("nginx", ("ws-small", "ws-large", "http"), idle=True),
    Nginx("nginx-buf64k", ("ws-large",), idle=False, buffer_64k=True),
    Haproxy("haproxy", ("ws-small", "ws-large", "http"), idle=True),
    HaproxyPy("haproxy-py", ("ws-small", "ws-large", "http"), idle=True),
    BareRelay("uvloop-relay", ("ws-small",), idle=False),
)

# Capacity: unpinned, as many workers as CPUs (`bench.capacity`).
ALL_CPUS = ",".join(str(c) for c in sorted(os.sched_getaffinity(0)))
CAPACITY_TARGETS: tuple[Target, ...] = (
    Nginx("nginx-auto", (), idle=False, workers="auto", cpus=ALL_CPUS),
    HaproxyPy("haproxy-py-auto", (), idle=False, workers="auto", cpus=ALL_CPUS),
)
