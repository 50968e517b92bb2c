"""`hactl lab chaos`'s edge: find the running lab or bring one up, run, and take down what it
brought up (also on Ctrl-C or a failure)."""

from __future__ import annotations

import contextlib
import random
from pathlib import Path

from haproxy_py.lab import control
from haproxy_py.lab.chaos.run import Options, Run, Say, uninterrupted
from haproxy_py.lab.chaos.schedule import KINDS
from haproxy_py.lab.chaos.verdict import Report


class ChaosError(Exception):
    pass


def options(
    *,
    faults: int | None,
    duration: float | None,
    seed: int | None,
    clients: int,
    kinds: str | None,
    budget: float,
) -> Options:
    chosen = tuple(k.strip() for k in kinds.split(",") if k.strip()) if kinds else tuple(KINDS)
    unknown = [k for k in chosen if k not in KINDS]
    if unknown or not chosen:
        raise ChaosError(
            f"unknown fault kind {unknown[0] if unknown else '(none)'!r}: "
            f"choose from {', '.join(KINDS)}"
        )
    return Options(
        seed=random.SystemRandom().randrange(1_000_000) if seed is None else seed,
        faults=faults,
        duration=duration,
        clients=clients,
        budget=budget,
        kinds=chosen,
    )


def chaos(
    *,
    run_dir: Path,
    chosen: Options,
    mode: str | None,
    say: Say,
    prefix: str = control.DEFAULT_PREFIX,
) -> Report:
    """Run `chosen` on the lab in `run_dir`, or on one brought up (and down again) for it, its
    namespaces named `prefix`..."""
    if control.Paths(run_dir).layout.exists():
        lab = control.Lab.load(run_dir)
        if mode is not None and mode != lab.layout.mode:
            raise ChaosError(
                f"the running lab is {lab.layout.mode}, not {mode}: leave out --mode, "
                "or `hactl lab down` first"
            )
        return Run(lab, chosen, say).execute()
    say(f"no lab is up: bringing one up in {run_dir} (and down again afterwards)")
    lab = control.Lab.up(run_dir=run_dir, prefix=prefix, mode=mode or "active-standby", say=say)
    try:
        return Run(lab, chosen, say).execute()
    finally:
        with contextlib.suppress(KeyboardInterrupt), uninterrupted():
            control.down(run_dir, keep_logs=True)
