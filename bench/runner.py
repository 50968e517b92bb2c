"""One benchmark run: every target through every workload, repetition by repetition.

Repetitions go target by target (rep 1 for all, then rep 2, ...) so that slow
drift of the shared machine hits every target alike. A target that fails is
reported with its reason and the run goes on with the others.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from bench import loadgen, profile
from bench.loadgen import Workload
from bench.procfs import rss_kib
from bench.procs import Spawned, StartError, free_port, spawn, wait_listening
from bench.quiet import wait_quiet
from bench.results import IdleRun, LoadRun, load_run_from
from bench.smoke import smoke
from bench.targets import HOST, PROXY_CPU, Running, Target, TargetFailed


@dataclass(frozen=True)
class Options:
    targets: tuple[Target, ...]
    workloads: tuple[Workload, ...]
    reps: int = 3
    idle_conns: int = 10_000
    outside_limit: float = 0.10  # cores; a noisier window is measured again
    reruns: int = 2
    quiet_wait_s: float = 3.0
    # Waiting for quiet and re-running share this many seconds, split evenly over
    # the repetitions: on a machine that stays busy the run still ends in bounded
    # time, and no repetition gets all the quiet windows.
    patience_s: float = 150.0
    profile: str | None = None  # target to sample with py-spy after the measurements


@dataclass
class Outcome:
    runs: list[LoadRun] = field(default_factory=list)
    idle: list[IdleRun] = field(default_factory=list)
    failures: dict[str, str] = field(default_factory=dict)
    profiles: dict[str, profile.Profile] = field(default_factory=dict)


def say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


@dataclass
class Backend:
    proc: Spawned
    address: str

    @classmethod
    def start(
        cls, workdir: Path, name: str = "backend", cpus: str = str(loadgen.LOAD_CPU)
    ) -> Backend:
        port = free_port()
        env = {**os.environ, "GOMAXPROCS": str(len(cpus.split(",")))}
        proc = spawn(name, [str(loadgen.BIN / "echo"), f"-addr={HOST}:{port}"], cpus, workdir, env)
        try:
            wait_listening(proc, HOST, port)
        except StartError:
            proc.stop()
            raise
        return cls(proc, f"{HOST}:{port}")


class Runner:
    def __init__(self, options: Options, workdir: Path) -> None:
        self.options = options
        self.workdir = workdir
        self.outcome = Outcome()
        self.patience_left = 0.0

    def run(self) -> Outcome:
        backend = Backend.start(self.workdir)
        try:
            for rep in range(1, self.options.reps + 1):
                self.patience_left = self.options.patience_s / self.options.reps
                for target in self.options.targets:
                    self._rep(target, backend, rep)
            for target in self.options.targets:
                if target.name == self.options.profile and target.name not in self.outcome.failures:
                    self._profile(target, backend)
        finally:
            backend.proc.stop()
        for target in self.options.targets:
            if (
                target.idle
                and self.options.idle_conns > 0
                and target.name not in self.outcome.failures
            ):
                self._idle(target)
        return self.outcome

    def start_target(self, target: Target, backend: str) -> Running | None:
        """Start `target` and smoke-test it; None (and a failure recorded) if either fails."""
        try:
            running = target.start(backend, self.workdir)
        except TargetFailed as exc:
            self._failed(target, str(exc))
            return None
        try:
            smoke(running.address)
        except TargetFailed as exc:
            running.stop()
            self._failed(target, str(exc))
            return None
        return running

    def _failed(self, target: Target, reason: str) -> None:
        self.outcome.failures[target.name] = reason
        say(f"{target.name}: FAILED, left out of this run: {reason}")

    def _rep(self, target: Target, backend: Backend, rep: int) -> None:
        workloads = [w for w in self.options.workloads if w.name in target.tests]
        if target.name in self.outcome.failures or not workloads:
            return
        running = self.start_target(target, backend.address)
        if running is None:
            return
        try:
            for workload in workloads:
                self.outcome.runs.append(self._measure(target, workload, running, backend, rep))
        finally:
            running.stop()

    def _measure(
        self, target: Target, workload: Workload, running: Running, backend: Backend, rep: int
    ) -> LoadRun:
        """Measure, and again (bounded) while outside load spoils the window; keep the quietest."""
        pids = {"backend": [backend.proc.pid]}
        if running.cpu_pids:
            pids["proxy"] = running.cpu_pids
        own = [pid for group in pids.values() for pid in group]
        best: LoadRun | None = None
        for attempt in range(1, self.options.reruns + 2):
            began = time.monotonic()
            if self.patience_left > 0:
                wait_quiet(own, self.options.outside_limit, self.options.quiet_wait_s)
            waited = time.monotonic() - began
            raw = loadgen.run(workload, running.address, pids)
            run = load_run_from(
                raw,
                target=target.name,
                test=workload.name,
                rep=rep,
                proxy_cpu=f"cpu{PROXY_CPU}",
                has_proxy=bool(running.cpu_pids),
            )
            # The first look for quiet (1 s) is part of every test; the rest is patience.
            self.patience_left -= time.monotonic() - began if attempt > 1 else max(0.0, waited - 1)
            if best is None or run.outside_cores < best.outside_cores:
                best = run
            quiet = run.outside_cores < self.options.outside_limit
            if run.failed or quiet or self.patience_left <= 0:
                break
            say(f"  outside load {run.outside_cores:.2f} cores: measuring again")
        assert best is not None
        best = dataclasses.replace(best, attempts=attempt)
        say(_describe(best))
        return best

    def _profile(self, target: Target, backend: Backend) -> None:
        running = self.start_target(target, backend.address)
        if running is None:
            return
        try:
            for workload in self.options.workloads:
                if workload.name in target.tests:
                    self._profile_one(target, workload, running)
        finally:
            running.stop()

    def _profile_one(self, target: Target, workload: Workload, running: Running) -> None:
        raw = self.workdir / f"profile-{workload.name}.txt"
        seconds = workload.warmup_s + workload.window_s
        try:
            sampler = profile.start(running.cpu_pids[-1], seconds, raw)  # the worker
        except FileNotFoundError as exc:
            say(f"profile of {workload.name} skipped: {exc}")
            return
        try:
            loadgen.run(workload, running.address, {})
            _, err = sampler.communicate(timeout=seconds + 30)
        finally:
            if sampler.poll() is None:
                sampler.kill()
                sampler.wait()
        if sampler.returncode != 0 or not raw.exists():
            reason = err.decode(errors="replace").strip().splitlines()
            say(
                f"profile of {workload.name} failed: {reason[-1] if reason else sampler.returncode}"
            )
            return
        self.outcome.profiles[workload.name] = profile.summarise(raw.read_text())
        say(f"profiled {target.name} under {workload.name}")

    def _idle(self, target: Target) -> None:
        backend = Backend.start(self.workdir, f"backend-idle-{target.name}")
        try:
            running = self.start_target(target, backend.address)
            if running is None:
                return
            try:
                self.outcome.idle.append(self._idle_run(target, running))
                say(_describe_idle(self.outcome.idle[-1]))
            finally:
                running.stop()
        finally:
            backend.proc.stop()

    def _idle_run(self, target: Target, running: Running) -> IdleRun:
        before = rss_kib(running.mem_pids)
        conns = loadgen.IdleConnections(running.address, self.options.idle_conns)
        try:
            opened = conns.wait_open()
            after = settled_rss(running.mem_pids)
            closed = conns.close()
        except (TimeoutError, ValueError) as exc:
            return IdleRun(target.name, 0, self.options.idle_conns, str(exc), before, before)
        finally:
            conns.stop()
        return IdleRun(
            target=target.name,
            connections=int(opened.get("open", 0)),
            errors=int(opened.get("errors", 0)),
            first_error=str(opened.get("first_error", "")),
            rss_before_kib=before,
            rss_after_kib=after,
            checked=int(closed.get("checked", 0)),
            checked_ok=int(closed.get("checked_ok", 0)),
            open_s=float(opened.get("open_s", 0.0)),
        )


def settled_rss(pids: list[int], timeout_s: float = 20.0) -> int:
    """RSS once it has stopped changing (4 polls 0.5 s apart within 0.2 %), or at the timeout."""
    deadline = time.monotonic() + timeout_s
    last, steady = rss_kib(pids), 0
    while steady < 4 and time.monotonic() < deadline:
        time.sleep(0.5)
        now = rss_kib(pids)
        steady = steady + 1 if abs(now - last) <= 0.002 * last else 0
        last = now
    return last


def _describe(run: LoadRun) -> str:
    cpu = f"{run.proxy_cpu_us:.1f} us/msg proxy CPU, " if run.proxy_cpu_us is not None else ""
    errors = f", {run.errors} errors ({run.first_error})" if run.errors or run.failed else ""
    return (
        f"rep {run.rep} {run.target:<13} {run.test:<9} {cpu}{run.rate:.0f} msg/s, "
        f"{run.mb_s:.1f} MB/s, p50/p99 {run.p50_us:.0f}/{run.p99_us:.0f} us, "
        f"outside {run.outside_cores:.2f} cores{errors}"
    )


def _describe_idle(run: IdleRun) -> str:
    per = f"{run.kib_per_conn:.2f} KiB/conn" if run.kib_per_conn is not None else "no connections"
    return (
        f"idle {run.target:<13} {run.connections} open ({run.errors} errors) "
        f"in {run.open_s:.1f} s, "
        f"RSS {run.rss_before_kib} -> {run.rss_after_kib} KiB: {per}; "
        f"{run.checked_ok}/{run.checked} sampled still echo"
    )


def selected(names: str | None, available: Mapping[str, object]) -> list[str]:
    """Comma-separated names, validated; all when None."""
    if not names:
        return list(available)
    chosen = [n.strip() for n in names.split(",") if n.strip()]
    unknown = [n for n in chosen if n not in available]
    if unknown:
        raise SystemExit(
            f"unknown name(s) {', '.join(unknown)}; choose from {', '.join(available)}"
        )
    return chosen
