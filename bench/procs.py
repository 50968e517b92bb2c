"""Starting and stopping the benchmark's own processes, each pinned to one CPU.

Every process is started through `taskset` (which execs, so the PID we hold is
the program's own) and is stopped by that PID only.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

_LIVE: list[Spawned] = []


class StartError(Exception):
    """A process did not come up; the message says which and shows its log."""


@dataclass
class Spawned:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def tail(self, lines: int = 8) -> str:
        try:
            text = self.log.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return "\n".join(text[-lines:])

    def stop(self, timeout: float = 10.0) -> None:
        if self in _LIVE:
            _LIVE.remove(self)
        if self.popen.poll() is not None:
            return
        self.popen.terminate()
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(timeout)


def spawn(
    name: str,
    argv: list[str],
    cpu: int | str,
    logdir: Path,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> Spawned:
    """Start `argv` on CPU(s) `cpu` (a number, or a taskset list such as "0,1")."""
    log = logdir / f"{name}.log"
    with log.open("ab") as out:
        popen = subprocess.Popen(
            ["taskset", "-c", str(cpu), *argv],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=cwd,
        )
    proc = Spawned(name, popen, log)
    _LIVE.append(proc)
    return proc


def stop_all() -> None:
    """Stop whatever is still running (after an error or an interrupt)."""
    for proc in reversed(list(_LIVE)):
        proc.stop()


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago (the kernel picks it)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def wait_listening(proc: Spawned, host: str, port: int, timeout: float = 30.0) -> None:
    """Poll until `port` accepts connections; fail early if the process exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.popen.poll() is not None:
            raise StartError(
                f"{proc.name} exited with status {proc.popen.returncode}:\n{proc.tail()}"
            )
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=1.0):
            return
        time.sleep(0.05)
    raise StartError(
        f"{proc.name} did not listen on {host}:{port} within {timeout:.0f} s:\n{proc.tail()}"
    )
