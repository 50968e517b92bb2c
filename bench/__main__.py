"""`python -m bench`: run the proxy benchmark and write bench/results/latest.{json,md}."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import platform
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path
from types import FrameType
from typing import Any

from bench import capacity, loadgen, profile
from bench.configs import max_clients
from bench.procs import StartError, stop_all
from bench.report import document, render
from bench.results import SUBJECT
from bench.runner import Backend, Options, Runner, say, selected
from bench.targets import ALL_CPUS, PROXY_CPU, TARGETS, HaproxyPy

RESULTS = Path(__file__).resolve().parent / "results"


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    target_names = ", ".join(t.name for t in TARGETS)
    parser.add_argument("--targets", help=f"comma-separated subset of: {target_names}")
    parser.add_argument(
        "--tests", help=f"comma-separated subset of: {', '.join(loadgen.WORKLOADS)}"
    )
    parser.add_argument(
        "--reps", type=int, default=3, help="repetitions of every load test (default 3)"
    )
    parser.add_argument(
        "--idle-conns",
        type=int,
        default=10_000,
        help="idle WebSocket connections (0 skips the test)",
    )
    parser.add_argument(
        "--out", type=Path, default=RESULTS, help="directory for latest.json and latest.md"
    )
    parser.add_argument(
        "--no-profile", action="store_true", help="skip the py-spy pass over haproxy-py"
    )
    parser.add_argument("--keep-workdir", action="store_true", help="keep configs and process logs")
    parser.add_argument(
        "--no-capacity",
        dest="capacity",
        action="store_false",
        help="skip the unpinned capacity ladders (workers = auto against nginx auto)",
    )
    parser.add_argument(
        "--baseline",
        metavar="DIR",
        help="also measure DIR's haproxy_py (another checkout) as target haproxy-py-base",
    )
    parser.add_argument(
        "--render", type=Path, metavar="JSON", help="only rewrite the Markdown beside a saved JSON"
    )
    args = parser.parse_args(argv)
    if args.reps < 1 or args.idle_conns < 0:
        parser.error("--reps must be at least 1 and --idle-conns not negative")
    return args


def _raise_fd_limit(idle_conns: int) -> tuple[int, str]:
    """Raise the open-file limit the proxies inherit; return the idle connections it allows.

    A proxy holds two descriptors per idle connection (client and backend). Where
    the hard limit cannot be raised (no CAP_SYS_RESOURCE), the idle test is sized
    to fit under it and the reason goes into the results.
    """
    need = 2 * idle_conns + 400
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, need), max(hard, need)))
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    fit = max_clients(hard) - 100
    if idle_conns <= fit:
        return idle_conns, ""
    reason = (
        f"the open-file limit is {hard} and cannot be raised here, so each proxy can hold "
        f"{max_clients(hard)} client connections: the idle test opens {fit} instead of {idle_conns}"
    )
    say(f"note: {reason}")
    return fit, reason


def _version(argv: list[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return "missing"
    lines = (done.stdout + done.stderr).strip().splitlines()
    return lines[0] if lines else "unknown"


def _machine() -> dict[str, Any]:
    versions = {
        "nginx": _version(["nginx", "-v"]).rpartition("/")[2],
        "haproxy": _version(["haproxy", "-v"]).split()[2] if shutil.which("haproxy") else "missing",
        "python": platform.python_version(),
    }
    for dist in ("haproxy-py", "aiohttp", "uvloop", "httptools"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = "missing"
    return {"cpus": os.cpu_count(), "kernel": platform.release(), "versions": versions}


def _write(out: Path, files: dict[str, str]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        tmp = out / f"{name}.tmp"
        tmp.write_text(text)
        tmp.replace(out / name)


def _interrupted(signum: int, _frame: FrameType | None) -> None:
    raise SystemExit(f"stopped by signal {signum}")


def _markdown_files(doc: dict[str, Any]) -> dict[str, str]:
    """latest.md, and profile.md when the run sampled haproxy-py."""
    files = {"latest.md": render(doc)}
    if doc.get("profiles"):
        profiles = {test: profile.Profile(**p) for test, p in doc["profiles"].items()}
        titles = {name: w["title"] for name, w in doc["settings"]["workloads"].items()}
        files["profile.md"] = profile.render(profiles, titles)
    return files


def _rerender(path: Path) -> int:
    try:
        doc = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise SystemExit(f"{path}: cannot read a result document ({exc})") from exc
    _write(path.parent, _markdown_files(doc))
    say(f"wrote the Markdown beside {path}")
    return 0


def _measure(args: argparse.Namespace) -> dict[str, Any]:
    """Run the benchmark and return its result document."""
    by_name = {t.name: t for t in TARGETS}
    if args.baseline:
        base = HaproxyPy(
            "haproxy-py-base",
            ("ws-small", "ws-large", "http"),
            False,
            workers="",
            tree=args.baseline,
        )
        by_name[base.name] = base
    targets = tuple(by_name[n] for n in selected(args.targets, by_name))
    workloads = tuple(loadgen.WORKLOADS[n] for n in selected(args.tests, loadgen.WORKLOADS))
    loadgen.program()  # fail early, with the hint, if the Go tools are not built
    idle_conns, idle_note = _raise_fd_limit(args.idle_conns)
    os.sched_setaffinity(0, {loadgen.LOAD_CPU})  # never disturb the proxy's core
    signal.signal(signal.SIGTERM, _interrupted)
    options = Options(
        targets=targets,
        workloads=workloads,
        reps=args.reps,
        idle_conns=idle_conns,
        profile=None if args.no_profile else SUBJECT,
    )
    workdir = Path(tempfile.mkdtemp(prefix="haproxy-py-bench-"))
    started, began = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), time.monotonic()
    load_at_start = os.getloadavg()
    say(f"benchmark: {', '.join(t.name for t in targets)}; {args.reps} reps; work dir {workdir}")
    runner = Runner(options, workdir)
    capacity_doc: dict[str, Any] | None = None
    try:
        outcome = runner.run()
        if args.capacity:
            capacity_doc = _capacity(runner, workdir)
    except StartError as exc:
        raise SystemExit(f"the benchmark backend did not start (run `make bench`): {exc}") from exc
    finally:
        stop_all()
        if not args.keep_workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    settings = {
        "reps": args.reps,
        "idle_conns": idle_conns,
        "idle_conns_requested": args.idle_conns,
        "idle_note": idle_note,
        "outside_limit_cores": options.outside_limit,
        "proxy_cpu": PROXY_CPU,
        "load_cpu": loadgen.LOAD_CPU,
        "workloads": {w.name: {**vars(w)} for w in workloads},
    }
    doc = document(
        runs=outcome.runs,
        idle=outcome.idle,
        failures=outcome.failures,
        targets=[t.name for t in targets],
        settings=settings,
        machine=_machine(),
        started=started,
        finished=time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        duration_s=time.monotonic() - began,
    )
    doc["profiles"] = {test: dataclasses.asdict(p) for test, p in outcome.profiles.items()}
    doc["capacity"] = capacity_doc
    doc["load_average"] = [load_at_start, os.getloadavg()]
    return doc


def _capacity(runner: Runner, workdir: Path) -> dict[str, Any]:
    """The unpinned part: every CPU for the proxy (and for the load, which shares them)."""
    backend = Backend.start(workdir, "backend-capacity", cpus=ALL_CPUS)
    try:
        return capacity.run_all(lambda t: runner.start_target(t, backend.address), say)
    finally:
        backend.proc.stop()


def main(argv: list[str] | None = None) -> int:
    args = _arguments(argv)
    if args.render:
        return _rerender(args.render)
    if (os.cpu_count() or 1) < 2:
        raise SystemExit("the benchmark needs two CPUs: one for the proxy, one for the load")
    doc = _measure(args)
    files = _markdown_files(doc)
    _write(args.out, {"latest.json": json.dumps(doc, indent=1) + "\n", **files})
    print(files["latest.md"])
    say(f"wrote {', '.join(str(args.out / name) for name in ['latest.json', *files])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
