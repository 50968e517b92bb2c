"""`ha-controller` as a process: config errors, metrics, crash and clean hand-over."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from haproxy_py.cluster.store import Store
from tests.integration.cluster.helpers import VIP1, etcd_config, view_where
from tests.support.etcd import EtcdCluster, free_ports
from tests.support.stand_in import StandInAgent
from tests.support.wait import eventually_async


def write_config(
    path: Path, endpoints: list[str], ident: str, metrics_port: int, extra: str = ""
) -> Path:
    listed = ", ".join(f'"{e}"' for e in endpoints)
    path.write_text(
        f"""
[cluster]
name = "cli"
vips = ["{VIP1}"]

[etcd]
endpoints = [{listed}]
timeout = 0.5

[controller]
id = "{ident}"
lease_ttl = 2
keepalive_interval = 0.5
tick = 0.2
metrics = "127.0.0.1:{metrics_port}"
{extra}

[logging]
format = "json"
"""
    )
    return path


class Processes:
    """Controller processes started by a test; all killed and reaped afterwards."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, config: Path) -> subprocess.Popen[bytes]:
        log = open(self.tmp / f"{config.stem}.log", "ab")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen(
            [sys.executable, "-m", "controller", "--config", str(config)],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=Path(__file__).resolve().parents[3],
        )
        log.close()
        self.procs.append(proc)
        return proc

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    procs = Processes(tmp_path)
    try:
        yield procs
    finally:
        procs.close()


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "controller", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).resolve().parents[3],
    )


class TestConfigErrors:
    def test_timing_invariant_is_refused_with_one_line(self, tmp_path: Path) -> None:
        config = write_config(
            tmp_path / "c.toml", ["127.0.0.1:1"], "x", 0, "keepalive_interval_typo = 1"
        )
        result = run_cli("--config", str(config))
        assert result.returncode == 2
        assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
        assert "controller.keepalive_interval_typo: unknown key" in result.stderr
        config.write_text(
            config.read_text().replace("keepalive_interval = 0.5", "keepalive_interval = 1.75")
        )
        config.write_text(config.read_text().replace("keepalive_interval_typo = 1", ""))
        result = run_cli("--config", str(config))
        assert result.returncode == 2
        assert "must be <= lease_ttl" in result.stderr

    def test_missing_file_and_check_config(self, tmp_path: Path) -> None:
        missing = run_cli("--config", str(tmp_path / "none.toml"))
        assert missing.returncode == 2 and "none.toml: no such file" in missing.stderr
        config = write_config(tmp_path / "ok.toml", ["127.0.0.1:1"], "x", 0)
        checked = run_cli("--config", str(config), "--check-config")
        assert checked.returncode == 0 and "ok" in checked.stdout


class TestProcesses:
    async def test_crash_then_clean_stop_hand_leadership_over(
        self, etcd: EtcdCluster, processes: Processes, tmp_path: Path
    ) -> None:
        """kill -9: a standby leads within the lease TTL; SIGTERM: at once. No VIP moves."""
        ports = free_ports(3)
        configs = [
            write_config(tmp_path / f"c{i}.toml", etcd.endpoints, f"c{i}", ports[i])
            for i in range(3)
        ]
        cfg = etcd_config(etcd.endpoints)
        agent = await StandInAgent(cfg, "cli", "a").start()
        store = Store(cfg, "cli")
        try:
            procs = {f"c{i}": processes.start(configs[i]) for i in range(3)}
            view = await view_where(store, lambda v: v.owner(VIP1) == "a" and v.leader is not None)
            assert view.leader is not None
            first = view.leader.id
            metrics = await eventually_async(lambda: _scrape(ports[int(first[1:])]))
            assert "haproxy_py_controller_is_leader 1" in metrics
            assert "haproxy_py_controller_etcd_reachable 1" in metrics

            procs[first].kill()
            killed = time.monotonic()
            view = await view_where(store, lambda v: v.leader is not None and v.leader.id != first)
            takeover = time.monotonic() - killed
            assert takeover < 2 + 0.5 + 2  # TTL + etcd's expiry check + slack for a busy box
            second = view.leader.id

            procs[second].send_signal(signal.SIGTERM)
            stopped = time.monotonic()
            assert await asyncio.to_thread(procs[second].wait, 20) == 0
            view = await view_where(
                store, lambda v: v.leader is not None and v.leader.id not in (first, second)
            )
            handover = time.monotonic() - stopped
            assert view.owner(VIP1) == "a" and view.epoch == 1  # controllers come and go, VIP stays
            print(f"controller takeover: kill -9 {takeover:.2f} s, SIGTERM {handover:.2f} s")
        finally:
            await agent.close()
            await store.close()

    async def test_unreachable_etcd_is_logged_once_and_sigterm_still_exits_cleanly(
        self, processes: Processes, tmp_path: Path
    ) -> None:
        (closed,) = free_ports(1)  # nothing listens there
        config = write_config(tmp_path / "down.toml", [f"127.0.0.1:{closed}"], "d", 0)
        config.write_text(config.read_text().replace('metrics = "127.0.0.1:0"', 'metrics = ""'))
        proc = processes.start(config)
        log = tmp_path / "down.log"

        async def logged() -> bool:
            return log.exists() and "etcd unreachable" in log.read_text()

        await eventually_async(logged)
        await asyncio.sleep(1.0)  # several ticks: the line must not repeat every cycle
        assert log.read_text().count('"event": "etcd unreachable"') == 1
        assert "Traceback" not in log.read_text()
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.wait, 30) == 0


async def _scrape(port: int) -> str | None:
    def get() -> str | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
                return r.read().decode()
        except OSError:
            return None

    return await asyncio.to_thread(get)
