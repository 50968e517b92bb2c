"""A CPU quota on chosen processes: a starved proxy without loading the machine for everyone.

One cgroup of the `cpu` controller (cgroup v2 `cpu.max` where v2 has the
controller, else v1's `cpu.cfs_quota_us`) holds the throttled processes and
every descendant; `release` moves them back to the root group and removes it.
Processes that ended meanwhile are skipped.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

PERIOD_US = 100_000
V2 = Path("/sys/fs/cgroup")
V1 = Path("/sys/fs/cgroup/cpu")


class ThrottleError(Exception):
    """The cgroup could not be made; the message says why and what to do."""


def _descendants(pid: int) -> list[int]:
    """`pid` and every process below it (threads follow their process)."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        with contextlib.suppress(OSError):
            for task in Path(f"/proc/{current}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
    return found


class Throttle:
    """`percent` of one CPU at most, shared by the processes put in it."""

    def __init__(self, name: str, percent: int) -> None:
        if _v2_has_cpu():
            self.root, self.procs_file = V2, "cgroup.procs"
            quota = [("cpu.max", f"{PERIOD_US * percent // 100} {PERIOD_US}")]
        elif (V1 / "cpu.cfs_quota_us").exists():
            self.root, self.procs_file = V1, "cgroup.procs"
            quota = [
                ("cpu.cfs_period_us", str(PERIOD_US)),
                ("cpu.cfs_quota_us", str(PERIOD_US * percent // 100)),
            ]
        else:
            raise ThrottleError(
                "no cgroup cpu controller found (v2 cpu.max or v1 cpu); run as root"
            )
        self.group = self.root / name
        try:
            self.group.mkdir(exist_ok=True)
            for key, value in quota:
                (self.group / key).write_text(value)
        except OSError as exc:
            raise ThrottleError(f"cannot make cgroup {self.group}: {exc.strerror}") from None
        self.pids: list[int] = []

    def add(self, pid: int) -> None:
        """Throttle `pid` and its descendants from now on."""
        for each in _descendants(pid):
            with contextlib.suppress(OSError):  # ended meanwhile
                (self.group / self.procs_file).write_text(str(each))
                self.pids.append(each)

    def release(self) -> None:
        """Every throttled process back to the root group, unthrottled."""
        for pid in self.pids:
            with contextlib.suppress(OSError):
                (self.root / self.procs_file).write_text(str(pid))
        self.pids = []

    def close(self) -> None:
        self.release()
        with contextlib.suppress(OSError):
            self.group.rmdir()


def _v2_has_cpu() -> bool:
    try:
        return "cpu" in (V2 / "cgroup.controllers").read_text().split()
    except OSError:
        return False
