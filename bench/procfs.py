"""Reading process and machine CPU/memory figures from /proc.

The parsers are pure (they take file text) so the arithmetic is testable; the
thin readers around them are the only I/O.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")


@dataclass(frozen=True)
class CpuLine:
    """Busy and total clock ticks of one `cpu` line of /proc/stat."""

    busy: int
    total: int


def parse_stat_fields(text: str) -> list[str]:
    """Fields of /proc/<pid>/stat from field 3 (state) on; the name may hold spaces or ')'."""
    return text[text.rindex(")") + 1 :].split()


def parse_ppid(text: str) -> int:
    return int(parse_stat_fields(text)[1])


def parse_cpu_ticks(text: str) -> int:
    """utime + stime of a whole process, in clock ticks."""
    fields = parse_stat_fields(text)
    return int(fields[11]) + int(fields[12])


def parse_machine(text: str) -> dict[str, CpuLine]:
    """`cpu` and `cpuN` lines of /proc/stat; busy excludes idle and iowait."""
    lines: dict[str, CpuLine] = {}
    for line in text.splitlines():
        if not line.startswith("cpu"):
            continue
        name, *raw = line.split()
        user, nice, system, idle, iowait, irq, softirq, steal = (int(v) for v in raw[:8])
        busy = user + nice + system + irq + softirq + steal
        lines[name] = CpuLine(busy=busy, total=busy + idle + iowait)
    return lines


def parse_rss_kib(status_text: str) -> int:
    """VmRSS of /proc/<pid>/status, in KiB."""
    for line in status_text.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise ValueError("no VmRSS line (process is a zombie or a kernel thread)")


def read_machine() -> dict[str, CpuLine]:
    return parse_machine((PROC / "stat").read_text())


def cpu_ticks(pid: int) -> int:
    """utime+stime of `pid`, 0 if it is gone."""
    try:
        return parse_cpu_ticks((PROC / str(pid) / "stat").read_text())
    except (OSError, ValueError, IndexError):
        return 0


def rss_kib(pids: list[int]) -> int:
    return sum(parse_rss_kib((PROC / str(pid) / "status").read_text()) for pid in pids)


def children(pid: int) -> list[int]:
    """Direct children of `pid` (e.g. nginx's worker under its master)."""
    found = []
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if parse_ppid((entry / "stat").read_text()) == pid:
                found.append(int(entry.name))
        except (OSError, ValueError, IndexError):
            continue
    return sorted(found)


def clock_ticks_per_second() -> int:
    return os.sysconf("SC_CLK_TCK")
