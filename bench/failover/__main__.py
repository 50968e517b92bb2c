"""`python -m bench.failover`: run every fault against every stack; write the JSON and the table.

Needs root (network namespaces), etcd, keepalived and curl. Everything runs in
namespaces named `hb-*` on a 198.18.x.0/24 bridge, and is removed at the end,
on failure, on Ctrl-C and on SIGTERM (a run that was itself SIGKILLed is
cleaned up by the next one). haproxy-py runs once per timing profile
(`haproxy-py`, `haproxy-py-fast`), each in a lab built with that profile;
keepalived uses whichever lab is up.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import random
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType
from typing import Any

from bench.failover import report, stacks, trial
from bench.failover.wsfleet import Fleet
from haproxy_py.lab import control
from haproxy_py.lab.client import NetnsLoop
from haproxy_py.lab.layout import PROXY_PORT

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "bench" / "results"
DAEMON_PACKAGES = ("haproxy_py", "agent", "controller")
RUN_DIR = Path("/run/haproxy-py/bench-failover")
PREFIX = "hb-"
NOFILE = 65536


def _csv(choices: tuple[str, ...]) -> Any:
    def parse(text: str) -> list[str]:
        items = [t.strip() for t in text.split(",") if t.strip()]
        unknown = [t for t in items if t not in choices]
        if unknown or not items:
            raise argparse.ArgumentTypeError(
                f"unknown {', '.join(unknown) or 'empty list'}; choose from {', '.join(choices)}"
            )
        return items

    return parse


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.failover", description=__doc__)
    parser.add_argument("--repeats", type=int, default=20, help="trials per scenario and stack")
    parser.add_argument(
        "--ws-repeats", type=int, default=2, help="extra trials with the WebSocket fleet"
    )
    parser.add_argument("--ws-clients", type=int, default=1000)
    parser.add_argument("--stacks", type=_csv(stacks.STACKS), default=list(stacks.STACKS))
    parser.add_argument("--scenarios", type=_csv(stacks.SCENARIOS), default=list(stacks.SCENARIOS))
    parser.add_argument("--probe-interval", type=float, default=0.005, help="seconds")
    parser.add_argument("--hold", type=float, default=0.5, help="window after the move, s")
    parser.add_argument(
        "--jitter",
        type=float,
        default=1.0,
        help="a random wait of up to this many seconds before each fault (its phase against "
        "etcd's 500 ms expiry sweep and the keepalives)",
    )
    parser.add_argument("--seed", type=int, help="of the random waits (default: from the clock)")
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument(
        "--keep",
        type=Path,
        action="append",
        default=[],
        help="a failover.json whose trials of stacks and scenarios not run now are kept in the "
        "results, with their own date and load (repeatable: the first file that has them wins)",
    )
    parser.add_argument("--run-dir", type=Path, default=RUN_DIR)
    parser.add_argument("--prefix", default=PREFIX, help="name prefix of the lab's namespaces")
    parser.add_argument(
        "--render",
        action="store_true",
        help="only rebuild failover.md (and the summary) from the failover.json in --results",
    )
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.ws_repeats < 0 or args.ws_clients < 1:
        parser.error("--repeats must be >= 1, --ws-repeats >= 0 and --ws-clients >= 1")
    if not 0 <= args.jitter <= 10:
        parser.error("--jitter must be between 0 and 10 seconds")
    if not 0.001 <= args.probe_interval <= 1:
        parser.error("--probe-interval must be between 0.001 and 1 seconds")
    return args


def _snapshot(run_dir: Path) -> None:
    """Run every daemon (and hactl) from a copy of the code taken now: a run lasts many minutes
    and restarts daemons hundreds of times, and must not mix versions if the tree is edited."""
    src = run_dir / "src"
    shutil.rmtree(src, ignore_errors=True)
    for package in DAEMON_PACKAGES:
        shutil.copytree(ROOT / package, src / package, ignore=shutil.ignore_patterns("__pycache__"))
    earlier = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = str(src) + (os.pathsep + earlier if earlier else "")


def _missing() -> str | None:
    problem = control.missing_requirements()
    if problem is not None:
        return problem
    for tool, package in (("keepalived", "keepalived"), ("curl", "curl")):
        if shutil.which(tool) is None:
            return f"the failover benchmark needs {tool}: apt-get install {package}"
    return None


def _raise_nofile(clients: int) -> None:
    """The client, the proxy and the backend each hold one or two sockets per WebSocket."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, max(NOFILE, 4 * clients)) if hard != resource.RLIM_INFINITY else NOFILE
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


def say(text: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {text}", flush=True)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


class Run:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        seed = args.seed if args.seed is not None else time.time_ns() % 1_000_000
        self.random = random.Random(seed)
        load = os.getloadavg()
        self.doc: dict[str, Any] = {
            "meta": {
                "started": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                "host": platform.node(),
                "cpus": os.cpu_count(),
                "load": f"{load[0]:.1f}",
                "repeats": args.repeats,
                "ws_repeats": args.ws_repeats,
                "ws_clients": args.ws_clients,
                "probe_interval_ms": args.probe_interval * 1000,
                "hold_s": args.hold,
                "jitter_s": args.jitter,
                "seed": seed,
                "keepalived": _version(["keepalived", "--version"]),
                "stack_s": {},  # wall time per stack: settling, faults and recovery
            },
            "stacks": {},
            "scenarios": args.scenarios,
            "trials": [],
            "aborted": {},
        }
        for path in args.keep:
            self._keep(path)

    def _keep(self, path: Path) -> None:
        """Take over the trials of the stacks and scenarios this run leaves out, saying which
        run they are from."""
        try:
            old = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise SystemExit(f"bench.failover: cannot read --keep {path}: {exc}") from None
        kept = self.doc["meta"].setdefault("kept", {})
        have = {(t["stack"], t["scenario"]) for t in self.doc["trials"]}
        now = {(name, sc) for name in self.args.stacks for sc in self.args.scenarios}
        for name, title in old["stacks"].items():
            pairs = {(name, sc) for sc in old["scenarios"]} - now - have
            if not pairs:
                continue
            self.doc["stacks"].setdefault(name, title)
            self.doc["trials"] += [t for t in old["trials"] if (t["stack"], t["scenario"]) in pairs]
            meta = old["meta"]
            kept[name] = _origins(
                [sc for sc in stacks.SCENARIOS if (name, sc) in pairs],
                f"run {meta['started']}, load average {meta['load']} at its start",
                meta.get("kept", {}).get(name, ""),
            )
            if name not in self.args.stacks and name in meta.get("stack_s", {}):
                self.doc["meta"]["stack_s"][name] = meta["stack_s"][name]
            scenarios = {*self.doc["scenarios"], *old["scenarios"]}
            self.doc["scenarios"] = [s for s in stacks.SCENARIOS if s in scenarios]

    def save(self) -> None:
        doc = self.doc
        order = {name: i for i, name in enumerate(stacks.STACKS)}
        doc["stacks"] = dict(sorted(doc["stacks"].items(), key=lambda kv: order.get(kv[0], 99)))
        stack_names = list(doc["stacks"])
        doc["summary"] = report.summarize_trials(doc["trials"], stack_names, doc["scenarios"])
        self.args.results.mkdir(parents=True, exist_ok=True)
        (self.args.results / "failover.json").write_text(json.dumps(doc, indent=1) + "\n")
        (self.args.results / "failover.md").write_text(report.render(doc))

    def stack(self, lab: control.Lab, loop: NetnsLoop, name: str) -> None:
        stack = stacks.make(lab, name)
        self.doc["stacks"][name] = stack.title
        say(f"== {stack.title}")
        began = time.monotonic()
        try:
            stack.start()
            for scenario in self.args.scenarios:
                for repeat in range(self.args.repeats if scenario in stack.scenarios else 0):
                    self._trial(stack, scenario, repeat, loop, None)
            if self.args.ws_repeats:
                self._fleet_trials(stack, loop)
        except stacks.BenchError as exc:
            # One stack stuck (e.g. never settling again) must not cost the others' figures.
            say(f"{stack.name}: giving up on this stack: {exc}")
            self.doc["aborted"][name] = str(exc)
            self.save()
        finally:
            stack.stop()
            stack.close()
            self.doc["meta"]["stack_s"][name] = round(time.monotonic() - began)

    def _fleet_trials(self, stack: stacks.Stack, loop: NetnsLoop) -> None:
        stack.settle()
        fleet = Fleet(f"http://{stack.vip}:{PROXY_PORT}/echo", self.args.ws_clients)
        say(f"connecting {self.args.ws_clients} WebSocket clients")
        loop.run(fleet.start())
        try:
            stacks.wait_until(fleet.all_connected, 120, "the WebSocket fleet to connect", 0.2)
            for scenario in self.args.scenarios:
                for repeat in range(self.args.ws_repeats if scenario in stack.scenarios else 0):
                    self._trial(stack, scenario, repeat, loop, fleet)
        finally:
            loop.run(fleet.stop(), timeout=60)

    def _trial(
        self,
        stack: stacks.Stack,
        scenario: str,
        repeat: int,
        loop: NetnsLoop,
        fleet: Fleet | None,
    ) -> None:
        done = trial.run(
            stack,
            scenario,
            repeat,
            loop,
            probe_interval=self.args.probe_interval,
            hold=self.args.hold,
            delay=self.random.uniform(0, self.args.jitter),
            fleet=fleet,
        )
        self.doc["trials"].append(done.as_dict())
        self.save()
        ws = (
            ""
            if fleet is None
            else f" ws back {done.ws_all_back_ms} ms ({done.ws_reconnected} reconnected)"
        )
        error = f" ERROR {done.error}" if done.error else ""
        say(
            f"{stack.name} {scenario} #{repeat} {done.old}->{done.new}: gap {done.gap_ms} ms, "
            f"new node after {done.new_node_ms} ms, dual {done.dual_ms} ms"
            f"{' (at end)' if done.dual_at_end else ''}{ws}{error}"
            f"{'; ' + done.detail if done.detail else ''}"
            f"; settle {done.settle_s} s, measure {done.measure_s} s, recover {done.recover_s} s"
        )


def _lab_for(args: argparse.Namespace, lab: control.Lab | None, profile: str | None) -> control.Lab:
    """The lab up now if it suits `profile` (None: any), else one built with it; the logs of
    a lab taken down stay in logs-<profile>."""
    if lab is not None and profile in (None, lab.layout.profile):
        return lab
    if lab is not None:
        say(f"removing the {lab.layout.profile} lab")
        control.down(args.run_dir, keep_logs=True)
        kept = args.run_dir / f"logs-{lab.layout.profile}"
        shutil.rmtree(kept, ignore_errors=True)
        lab.paths.logs.rename(kept)
    profile = profile or "default"
    say(f"building the lab, timing profile {profile} (namespaces {args.prefix}*)")
    return control.Lab.up(
        run_dir=args.run_dir, prefix=args.prefix, nodes=2, profile=profile, say=say
    )


def _version(argv: list[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except OSError:
        return "?"
    return (done.stdout + done.stderr).splitlines()[0] if (done.stdout + done.stderr) else "?"


def _render(results: Path) -> int:
    source = results / "failover.json"
    try:
        doc = json.loads(source.read_text())
    except (OSError, ValueError) as exc:
        print(f"bench.failover: cannot read {source}: {exc}", file=sys.stderr)
        return 1
    doc["summary"] = report.summarize_trials(doc["trials"], list(doc["stacks"]), doc["scenarios"])
    source.write_text(json.dumps(doc, indent=1) + "\n")
    (results / "failover.md").write_text(report.render(doc))
    return 0


def _origins(scenarios: list[str], run: str, earlier: str) -> str:
    """Which run each kept scenario is from: `run`, or for those `run` had kept itself the
    run its `earlier` note ("a, b: run ...; c: run ...") names."""
    found: dict[str, list[str]] = {}
    theirs = dict(
        (sc, origin)
        for part in earlier.split("; ")
        if ": " in part
        for which, origin in [part.split(": ", 1)]
        for sc in which.split(", ")
    )
    for sc in scenarios:
        found.setdefault(theirs.get(sc, run), []).append(sc)
    return "; ".join(f"{', '.join(which)}: {origin}" for origin, which in found.items())


def main(argv: list[str] | None = None) -> int:
    args = _arguments(argv)
    if args.render:
        return _render(args.results)
    problem = _missing()
    if problem is not None:
        print(f"bench.failover: {problem}", file=sys.stderr)
        return 2
    _raise_nofile(args.ws_clients)
    signal.signal(signal.SIGTERM, _interrupt)
    control.down(args.run_dir)  # what a killed earlier run left behind
    _snapshot(args.run_dir)
    run = Run(args)
    started = time.monotonic()
    try:
        lab: control.Lab | None = None
        for name in args.stacks:
            lab = _lab_for(args, lab, stacks.profile_of(name))
            with NetnsLoop(lab.layout.client.netns) as loop:
                run.stack(lab, loop, name)
    except (control.LabError, stacks.BenchError) as exc:
        print(f"bench.failover: {exc}", file=sys.stderr)
        with contextlib.suppress(Exception):
            run.save()
        return 1
    except KeyboardInterrupt:
        print("bench.failover: interrupted; removing the lab", file=sys.stderr)
        return 130
    finally:
        say("removing the lab")
        control.down(args.run_dir, keep_logs=True)
        for name in (*stacks.STACKS, "src"):  # keepalived's files, the code snapshot
            shutil.rmtree(args.run_dir / name, ignore_errors=True)
    run.doc["meta"]["wall_s"] = round(time.monotonic() - started)
    run.doc["meta"]["load_end"] = f"{os.getloadavg()[0]:.1f}"
    run.save()
    say(f"done in {time.monotonic() - started:.0f} s: {args.results / 'failover.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
