"""Where haproxy-py's CPU goes under each workload, from py-spy samples.

This pass runs after the measured windows: sampling pauses the proxy, so its
windows are never used for the CPU figures. Native frames are included, so the
split shows the interpreter, uvloop, httptools and the system calls (libc).

Idle is what waits, not only the event loop in epoll: py-spy also reports a
thread parked on a lock as active, so the access log's writer thread, asleep
in `SimpleQueue.get` between batches (all the time under WebSocket load, when
no line is written), showed as 40-58 % of the "busy" samples in an unnamed
libc leaf. That thread used 0 ticks of CPU over 6 s at 4000 req/s (per-thread
`/proc/<pid>/task/<tid>/stat`, about 16 wake-ups a second): an artefact, so a
sample with a lock wait on its stack counts as idle.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

PROJECT = "haproxy_py/"
IDLE_LEAVES = ("epoll_wait", "epoll_pwait")
# A frame that means the thread is asleep on a lock (a queue's get, a condition's wait).
PARKED_FRAMES = ("PyThread_acquire_lock_timed",)
_LINE = re.compile(r":\d+\)$")


@dataclass(frozen=True)
class Profile:
    samples: int  # all samples, idle included
    idle: int  # samples waiting: in epoll for events, or asleep on a lock
    self_time: list[tuple[str, int]]  # leaf function -> busy samples
    project: list[tuple[str, int]]  # haproxy_py function -> busy samples with it on the stack
    components: list[tuple[str, int]]


def _function(frame: str) -> str:
    """Drop line numbers ('f (pkg/mod.py:12)' -> 'f (pkg/mod.py)') and bare addresses."""
    frame = _LINE.sub(")", frame)
    if frame.startswith("0x"):
        return frame.partition(" ")[2] or frame
    return frame


def _parked(frames: list[str]) -> bool:
    return any(f.split(" ")[0] in PARKED_FRAMES for f in frames)


def _component(leaf: str) -> str:
    if "libc.so" in leaf:
        return "system calls and libc"
    if "(loop.c" in leaf or "uv" in leaf.split(" ")[0] or "-inl.h" in leaf:
        return "uvloop / libuv"
    if "llhttp" in leaf or "(parser.c" in leaf or "(api.c" in leaf:
        return "httptools / llhttp"
    if ".py)" in leaf:
        return "Python code (" + ("haproxy_py" if PROJECT in leaf else "library") + ")"
    return "interpreter and C runtime"


def summarise(collapsed: str, top: int = 12) -> Profile:
    """Aggregate py-spy's raw (collapsed) output: `frame;frame;...;leaf count` per line."""
    leaves: Counter[str] = Counter()
    project: Counter[str] = Counter()
    components: Counter[str] = Counter()
    samples = idle = 0
    for line in collapsed.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_function(f) for f in stack.split(";")]
        samples += count
        if frames[-1].split(" ")[0] in IDLE_LEAVES or _parked(frames):
            idle += count
            continue
        leaves[frames[-1]] += count
        components[_component(frames[-1])] += count
        for name in {f for f in frames if PROJECT in f}:
            project[name] += count
    busy = samples - idle
    # Entry frames (the CLI, asyncio.run) are on every stack and say nothing.
    inner = Counter({name: n for name, n in project.items() if n < busy})
    return Profile(
        samples, idle, leaves.most_common(top), inner.most_common(top), components.most_common()
    )


def render(profiles: dict[str, Profile], titles: dict[str, str]) -> str:
    out = [
        "# Where haproxy-py's CPU goes",
        "",
        "py-spy samples (250 Hz, native frames) of the haproxy-py process under each workload, "
        "taken after the measured windows. Shares are of the busy samples (samples waiting "
        "in epoll_wait or asleep on a lock, such as the access log's writer thread between "
        "batches, are idle and left out). A libc leaf such as `write` or `read` is time in "
        "that system call, kernel included.",
        "",
    ]
    for test, p in profiles.items():
        busy = max(1, p.samples - p.idle)

        def pct(n: int, busy: int = busy) -> str:
            return f"{100 * n / busy:.1f} %"

        out += [f"## {titles.get(test, test)}", "", f"{busy} busy samples of {p.samples}.", ""]
        out += [
            "| component | share |",
            "|---|---|",
            *(f"| {c} | {pct(n)} |" for c, n in p.components),
            "",
        ]
        out += ["| leaf function (self time) | share |", "|---|---|"]
        out += [f"| `{f}` | {pct(n)} |" for f, n in p.self_time] + [""]
        out += ["| haproxy_py function (on the stack) | share |", "|---|---|"]
        out += [f"| `{f}` | {pct(n)} |" for f, n in p.project] + [""]
    return "\n".join(out)


def py_spy() -> str | None:
    beside = Path(sys.executable).with_name("py-spy")
    return str(beside) if beside.exists() else shutil.which("py-spy")


def start(pid: int, seconds: float, output: Path) -> subprocess.Popen[bytes]:
    """Sample `pid` for `seconds` in the background into `output` (raw collapsed stacks)."""
    program = py_spy()
    if program is None:
        raise FileNotFoundError("py-spy is not installed (pip install -e '.[test]')")
    argv = [program, "record", "--pid", str(pid), "--duration", str(int(seconds)), "--rate", "250"]
    argv += ["--format", "raw", "--native", "--output", str(output)]
    return subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
