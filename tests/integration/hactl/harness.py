"""Helpers for hactl's integration tests: run hactl, start stand-in nodes, write cluster keys.

Processes started here are stopped by PID (SIGTERM, then SIGKILL) and reaped,
also when a test fails, through the `Processes` context manager.
"""

from __future__ import annotations

import asyncio
import json
import os
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from click.testing import CliRunner, Result

from haproxy_py.cluster.config import EtcdConfig
from haproxy_py.cluster.records import (
    ClusterPolicy,
    ClusterView,
    ControllerLeader,
    Event,
    VipAssignment,
)
from haproxy_py.cluster.store import Store
from haproxy_py.hactl.cli import cli
from tests.support.etcd import EtcdCluster
from tests.support.wait import eventually

REPO = Path(__file__).resolve().parents[3]
T = TypeVar("T")
WAIT = 30.0  # generous: the machine is shared


def hactl(etcd: EtcdCluster, cluster: str, *args: str, input: str | None = None) -> Result:
    """hactl in-process (CliRunner) against `etcd`; the result keeps stderr apart from stdout."""
    endpoints = ",".join(etcd.endpoints)
    # A generous etcd deadline: the machine is shared, and a loaded one must not fail a test.
    argv = ["--etcd", endpoints, "--etcd-timeout", "5", "--cluster", cluster, *args]
    return CliRunner().invoke(cli, argv, input=input, catch_exceptions=False)


def with_store(etcd: EtcdCluster, cluster: str, body: Callable[[Store], Awaitable[T]]) -> T:
    async def main() -> T:
        async with Store(EtcdConfig(tuple(etcd.endpoints), timeout=5.0), cluster) as store:
            return await body(store)

    return asyncio.run(main())


def read_view(etcd: EtcdCluster, cluster: str) -> ClusterView:
    return with_store(etcd, cluster, lambda store: store.read_view())


@dataclass
class Processes:
    """Subprocesses of one test, stopped and reaped on exit."""

    procs: list[subprocess.Popen[str]] = field(default_factory=list)

    def __enter__(self) -> Processes:
        return self

    def __exit__(self, *exc: object) -> None:
        for proc in reversed(self.procs):
            stop(proc)

    def start(
        self, argv: Sequence[str], ready: str | None = None, log: Path | None = None
    ) -> subprocess.Popen[str]:
        """Start `argv`; with `ready`, wait until that line appears on its stdout.

        Without `ready` its output goes to `log` (a file: a pipe nobody reads would fill up).
        """
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        with open(log or os.devnull, "a") as sink:
            proc = subprocess.Popen(
                list(argv),
                stdout=subprocess.PIPE if ready else sink,
                stderr=subprocess.PIPE if ready else sink,
                stdin=subprocess.DEVNULL,
                text=True,
                env=env,
                cwd=REPO,
            )
        self.procs.append(proc)
        if ready:
            assert proc.stdout is not None
            line = _readline(proc, WAIT)
            if line.strip() != ready:
                proc.kill()
                error = proc.stderr.read() if proc.stderr else ""
                raise AssertionError(f"{argv[0]} did not start: {line!r} {error}")
        return proc

    def standin(
        self, etcd: EtcdCluster, cluster: str, name: str, *extra: str
    ) -> subprocess.Popen[str]:
        """A registered node (tests/support/stand_in.py) that acknowledges releases."""
        argv = [sys.executable, "-m", "tests.support.stand_in"]
        argv += ["--etcd", ",".join(etcd.endpoints), "--cluster", cluster, "--name", name]
        return self.start([*argv, *extra], ready="ready")

    def controller(
        self, etcd: EtcdCluster, cluster: str, vips: Sequence[str], workdir: Path, ident: str
    ) -> subprocess.Popen[str]:
        """The real `ha-controller`, started and waited for until it holds the leadership."""
        config = workdir / f"{ident}.toml"
        # JSON string arrays are valid TOML arrays.
        config.write_text(
            f'[cluster]\nname = "{cluster}"\nvips = {json.dumps(list(vips))}\n'
            f"[etcd]\nendpoints = {json.dumps(etcd.endpoints)}\n"
            f'[controller]\nid = "{ident}"\nmetrics = ""\nrelease_timeout = 10\n'
            '[logging]\nlevel = "info"\nformat = "json"\n'
        )
        script = os.path.join(os.path.dirname(sys.executable), "ha-controller")
        proc = self.start([script, "--config", str(config)], log=workdir / f"{ident}.log")

        def leading() -> bool:
            if proc.poll() is not None:
                log = (workdir / f"{ident}.log").read_text()
                raise AssertionError(f"ha-controller exited {proc.returncode}: {log}")
            leader = read_view(etcd, cluster).leader
            return leader is not None and leader.id == ident

        eventually(leading, WAIT, f"controller {ident} to lead")
        return proc


def _readline(proc: subprocess.Popen[str], timeout: float) -> str:
    """One stdout line, or "" if the process ends or stays silent for `timeout` s."""
    assert proc.stdout is not None
    with selectors.DefaultSelector() as selector:
        selector.register(proc.stdout, selectors.EVENT_READ)
        if not selector.select(timeout):
            return ""
    return proc.stdout.readline()


def stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    for stream in (proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()


# -- writing what a controller would, for tests that run without one -------------------------


async def _leased_put(store: Store, key: str, value: bytes, ttl: int = 30) -> int:
    lease = await store.grant_lease(ttl)
    await store.put(key, value, lease.id)
    return lease.id


def seed_controller_keys(
    etcd: EtcdCluster,
    cluster: str,
    *,
    settings: ClusterPolicy | None,
    leader: str | None,
    owners: dict[str, str],
    events: Sequence[Event] = (),
) -> None:
    """Write config, a leader key (under its own lease), VIP assignments naming the owners'
    leases, events and the epoch, as a controller would have."""

    async def body(store: Store) -> None:
        view = await store.read_view()
        if settings is not None:
            await store.put(store.schema.config, settings.to_json())
        if leader is not None:
            record = ControllerLeader(leader, since=time.time() - 60)
            await _leased_put(store, store.schema.leader, record.to_json())
        for epoch, (vip, node) in enumerate(sorted(owners.items()), start=1):
            lease = view.nodes[node].lease
            assignment = VipAssignment(vip, node, epoch=epoch, since=time.time() - 5, lease=lease)
            await store.put(store.schema.vip(vip), assignment.to_json())
        for event in events:
            await store.put(store.schema.event(event.seq), event.to_json())
        epoch = max([len(owners), *(e.seq for e in events)])
        await store.put(store.schema.epoch, str(epoch).encode())

    with_store(etcd, cluster, body)
