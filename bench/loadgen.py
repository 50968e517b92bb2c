"""The workloads and the Go load generator that drives them.

Each load test is one `loadgen` run pinned to the load core: connect, warm up,
then a measurement window at whose edges the load generator itself samples the
CPU of the proxy, the backend and the machine.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

BIN = Path(__file__).resolve().parent / "bin"
LOAD_CPU = 0
IDLE_SOURCES = ("127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5")


@dataclass(frozen=True)
class Workload:
    name: str
    title: str
    mode: str  # "ws" or "http"
    conns: int
    rate: float  # total messages/s; 0 = closed loop
    size: int = 64
    binary: bool = False
    warmup_s: float = 1.0
    window_s: float = 3.0

    def argv(self, address: str, pids: dict[str, list[int]]) -> list[str]:
        scheme, path = ("ws", "/ws") if self.mode == "ws" else ("http", "/")
        pid_spec = ",".join(f"{name}={pid}" for name, group in pids.items() for pid in group)
        args = [
            f"-mode={self.mode}",
            f"-url={scheme}://{address}{path}",
            f"-c={self.conns}",
            f"-size={self.size}",
            f"-rate={self.rate:g}",
            f"-warmup={self.warmup_s}s",
            f"-d={self.window_s}s",
            f"-limit={self.limit_s:.0f}s",
            f"-pids={pid_spec}",
        ]
        return args + (["-binary"] if self.binary else [])

    @property
    def limit_s(self) -> float:
        return self.warmup_s + self.window_s + 40


WORKLOADS = {
    w.name: w
    for w in (
        Workload(
            "ws-small", "WebSocket 64 B ping-pong, 100 connections, 4000 msg/s", "ws", 100, 4000
        ),
        Workload(
            "ws-large",
            "WebSocket 64 KiB binary ping-pong, 10 connections, closed loop",
            "ws",
            10,
            0,
            size=65536,
            binary=True,
            warmup_s=0.5,
            window_s=2.5,
        ),
        Workload("http", "HTTP GET keep-alive, 50 connections, 4000 req/s", "http", 50, 4000),
    )
}


def program() -> Path:
    path = BIN / "loadgen"
    if not path.exists():
        raise SystemExit(f"{path} is missing: build it with `make bench`")
    return path


def _env(procs: int = 1) -> dict[str, str]:
    return {**os.environ, "GOMAXPROCS": str(procs)}


def run(
    workload: Workload, address: str, pids: dict[str, list[int]], cpus: str = str(LOAD_CPU)
) -> dict[str, Any]:
    """One bounded load run on CPU(s) `cpus`; a failure comes back as a result with no
    messages and the reason."""
    argv = ["taskset", "-c", cpus, str(program()), *workload.argv(address, pids)]
    procs = len(cpus.split(","))
    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, env=_env(procs), timeout=workload.limit_s + 15
        )
    except subprocess.TimeoutExpired:
        return {"messages": 0, "first_error": "load generator did not finish in time"}
    try:
        result: dict[str, Any] = json.loads(done.stdout)
    except json.JSONDecodeError:
        reason = done.stderr.strip().splitlines()
        return {
            "messages": 0,
            "first_error": reason[-1] if reason else f"exit status {done.returncode}",
        }
    return result


def _read_line(stream: IO[str], timeout: float) -> dict[str, Any]:
    ready, _, _ = select.select([stream], [], [], timeout)
    line = stream.readline() if ready else ""
    if not line:
        raise TimeoutError(f"no answer from the load generator within {timeout:.0f} s")
    result: dict[str, Any] = json.loads(line)
    return result


class IdleConnections:
    """Holds `count` idle WebSocket connections open until `close()`."""

    def __init__(self, address: str, count: int) -> None:
        argv = [
            "taskset",
            "-c",
            str(LOAD_CPU),
            str(program()),
            "-mode=idle",
            f"-url=ws://{address}/ws",
            f"-c={count}",
            f"-src={','.join(IDLE_SOURCES)}",
            "-limit=240s",
        ]
        self._proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=_env(),
        )

    def wait_open(self, timeout: float = 120.0) -> dict[str, Any]:
        assert self._proc.stdout is not None
        return _read_line(self._proc.stdout, timeout)

    def close(self, timeout: float = 60.0) -> dict[str, Any]:
        """Close the connections after checking that a sample of them still echoes."""
        assert self._proc.stdin is not None and self._proc.stdout is not None
        self._proc.stdin.close()
        try:
            return _read_line(self._proc.stdout, timeout)
        finally:
            self.stop()

    def stop(self) -> None:
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(10)
