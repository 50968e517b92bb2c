"""`python -m bench.syscalls`: system calls per request or message, proxy by proxy.

CPU per message says how much; this says where the kernel's share comes from.
Each target is started as `python -m bench` starts it (pinned, workers = 1),
the workload runs paced as in the bench, and `perf stat` counts every
`syscalls:sys_enter_*` tracepoint of the proxy's processes (all threads) over a
window inside the load generator's own. Counts are divided by the messages the
load generator completed per second times the window (a paced load completes
its rate; a closed-loop one is steady). Counting tracepoints is cheap next to
strace, so the proxy batches as it does unobserved.
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench import loadgen
from bench.procs import stop_all
from bench.runner import Backend, say, selected
from bench.targets import TARGETS, HaproxyPy, Running, Target, TargetFailed

PREFIX = "syscalls:sys_enter_"
SWITCHES = "context-switches"


def parse_perf_csv(text: str) -> dict[str, int]:
    """`perf stat -x,` lines (count,unit,event,...) as {syscall: count}, nonzero only;
    context switches (not a syscall, but what a sleeping `epoll_wait` costs) as
    "(context switches)"."""
    counts: dict[str, int] = {}
    for line in text.splitlines():
        fields = line.split(",")
        if len(fields) < 3 or not fields[2].startswith((PREFIX, SWITCHES)):
            continue
        try:
            count = int(fields[0])
        except ValueError:  # "<not counted>"
            continue
        if count:
            name = "(context switches)" if fields[2] == SWITCHES else fields[2][len(PREFIX) :]
            counts[name] = counts.get(name, 0) + count
    return counts


def count(pids: list[int], seconds: float) -> dict[str, int]:
    """Every syscall the processes `pids` (all their threads) enter in `seconds`."""
    perf = shutil.which("perf")
    if perf is None:
        raise SystemExit("perf is not installed (apt-get install linux-perf)")
    argv = [perf, "stat", "-x,", "-e", f"{SWITCHES},{PREFIX}*", "-p", ",".join(map(str, pids))]
    done = subprocess.run(
        [*argv, "--", "sleep", f"{seconds:g}"],
        capture_output=True,
        text=True,
        timeout=seconds + 60,
    )
    return parse_perf_csv(done.stderr)


def measure(
    workload: loadgen.Workload, running: Running, backend: Backend, window_s: float
) -> tuple[dict[str, int], float]:
    """Syscall counts over `window_s` inside a load run, and the messages per second."""
    pids = {"backend": [backend.proc.pid], "proxy": running.cpu_pids}
    load: dict[str, Any] = {}
    longer = dataclasses.replace(workload, window_s=window_s + 2.0)
    thread = threading.Thread(
        target=lambda: load.update(loadgen.run(longer, running.address, pids))
    )
    thread.start()
    time.sleep(workload.warmup_s + 1.0)
    counts = count(running.cpu_pids, window_s)
    thread.join()
    rate = float(load.get("messages", 0)) / longer.window_s
    if not rate:
        raise TargetFailed(f"load failed: {load.get('first_error', 'no messages')}")
    return counts, rate


def table(results: dict[str, tuple[dict[str, int], float]], window_s: float) -> str:
    """Per message: one column per target, one row per syscall (largest first), a total."""
    names = list(results)
    per: dict[str, dict[str, float]] = {
        name: {call: n / (rate * window_s) for call, n in counts.items()}
        for name, (counts, rate) in results.items()
    }
    calls = sorted(
        {call for row in per.values() for call in row},
        key=lambda call: -max(row.get(call, 0.0) for row in per.values()),
    )
    lines = [
        "| syscall | " + " | ".join(names) + " |",
        "|---|" + "---:|" * len(names),
    ]
    for call in calls:
        if max(row.get(call, 0.0) for row in per.values()) < 0.005:
            continue
        cells = " | ".join(f"{per[name].get(call, 0.0):.3f}" for name in names)
        lines.append(f"| {call} | {cells} |")
    totals = " | ".join(
        f"**{sum(n for call, n in per[name].items() if call[0] != '('):.2f}**" for name in names
    )
    lines.append(f"| syscalls | {totals} |")
    rates = " | ".join(f"{results[name][1]:.0f}" for name in names)
    lines.append(f"| (messages/s) | {rates} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.syscalls", description=__doc__)
    parser.add_argument("--targets", default="nginx,haproxy-py")
    parser.add_argument("--tests", default="http")
    parser.add_argument("--window", type=float, default=3.0, help="seconds counted (default 3)")
    parser.add_argument("--baseline", metavar="DIR", help="also count DIR's haproxy_py")
    args = parser.parse_args(argv)
    available: dict[str, Target] = {t.name: t for t in TARGETS}
    if args.baseline:
        available["haproxy-py-base"] = HaproxyPy(
            "haproxy-py-base", ("ws-small", "ws-large", "http"), idle=False, tree=args.baseline
        )
    targets = [available[n] for n in selected(args.targets, available)]
    workloads = [loadgen.WORKLOADS[n] for n in selected(args.tests, loadgen.WORKLOADS)]
    with tempfile.TemporaryDirectory(prefix="bench-syscalls-") as tmp:
        workdir = Path(tmp)
        backend = Backend.start(workdir)
        try:
            for workload in workloads:
                results: dict[str, tuple[dict[str, int], float]] = {}
                for target in targets:
                    if workload.name not in target.tests:
                        continue
                    try:
                        running = target.start(backend.address, workdir)
                    except TargetFailed as exc:
                        say(f"{target.name}: FAILED: {exc}")
                        continue
                    try:
                        results[target.name] = measure(workload, running, backend, args.window)
                    except TargetFailed as exc:
                        say(f"{target.name}: FAILED: {exc}")
                    finally:
                        running.stop()
                print(f"\n### {workload.title}: syscalls per message\n")
                print(table(results, args.window), flush=True)
        finally:
            backend.proc.stop()
            stop_all()
    return 0


if __name__ == "__main__":
    sys.exit(main())
