"""The chaos run's pure core: the schedule replays from its seed, the checks can fail."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any, cast

import pytest
from click.testing import CliRunner

from haproxy_py.hactl.cli import cli
from haproxy_py.lab.chaos import verdict
from haproxy_py.lab.chaos.faults import FaultError, Injector
from haproxy_py.lab.chaos.schedule import KINDS, Fault, ScheduleError, plan
from haproxy_py.lab.chaos.session import ChaosError, options
from haproxy_py.lab.chaos.verdict import (
    Outcome,
    Report,
    SeqCheck,
    Violation,
    outage,
    outage_bound,
)

NODES, VIPS = ("node1", "node2"), ("198.18.200.100", "198.18.200.101")


def test_the_seed_replays_the_schedule_and_another_seed_does_not() -> None:
    first = plan(7, 50, NODES, VIPS)
    assert plan(7, 50, NODES, VIPS) == first
    assert plan(8, 50, NODES, VIPS) != first
    assert [f.index for f in first] == list(range(1, 51))


def test_every_kind_comes_once_per_round_with_a_fitting_target() -> None:
    faults = plan(3, 2 * len(KINDS), NODES, VIPS)
    for round_ in (faults[: len(KINDS)], faults[len(KINDS) :]):
        assert sorted(f.kind for f in round_) == sorted(KINDS)
    for f in faults:
        expected = {"node": NODES, "vip": VIPS, "": ("",)}[KINDS[f.kind]]
        assert f.target in expected, f
        assert 0.5 <= f.hold <= 3.0


def test_a_subset_of_kinds_and_unknown_kinds() -> None:
    assert {f.kind for f in plan(1, 10, NODES, VIPS, ["pause", "failover"])} == {
        "pause",
        "failover",
    }
    with pytest.raises(ScheduleError, match="unknown fault kind 'nap'"):
        plan(1, 3, NODES, VIPS, ["nap"])
    with pytest.raises(ChaosError, match="unknown fault kind 'nap': choose from kill-node"):
        options(faults=3, duration=None, seed=1, clients=0, kinds="pause,nap", budget=1.0)
    assert options(
        faults=3, duration=None, seed=None, clients=0, kinds=None, budget=1
    ).kinds == tuple(KINDS)


def test_sequence_check_names_loss_duplicates_and_reordering() -> None:
    check = SeqCheck("ws0.1")
    assert [check.echo(s) for s in (0, 1, 2)] == [None, None, None]
    assert check.echo(4) == "ws0.1: lost 1 (got 4, expected 3)"
    assert check.echo(4) == "ws0.1: duplicate or reordered 4 (expected 5)"
    assert check.echo(3) == "ws0.1: duplicate or reordered 3 (expected 5)"
    assert check.echo(5) is None
    assert len(check.problems) == 3


def test_outage_is_the_longest_stretch_without_an_answer() -> None:
    answers = [0.0, 0.1, 0.2, 1.5, 1.6, 3.0]
    assert outage(answers, start=0.15, end=1.6) == pytest.approx(1.3)  # from 0.2 to 1.5
    assert outage([], start=1.0, end=2.5) == pytest.approx(1.5)
    assert outage(answers, start=1.55, end=1.6) == pytest.approx(0.1)


def _outcome(kind: str, gap: float, recovered: float | None) -> Outcome:
    return Outcome(Fault(1, kind, "node1", 1.0), gap, recovered, 0.5, budget=2.0)


def test_report_table_json_and_verdict() -> None:
    report = Report(seed=42, mode="active-standby", clients=3)
    report.outcomes = [
        _outcome("kill-node", 1.0, 0.2),
        _outcome("kill-node", 3.0, 2.5),
        _outcome("pause", 0.05, 0.01),
    ]
    assert report.passed
    doc = report.to_json()
    row = next(r for r in doc["summary"] if r["kind"] == "kill-node")
    assert row == {
        "kind": "kill-node",
        "count": 2,
        "outage_p50_ms": 2000.0,
        "outage_p95_ms": 2900.0,
        "outage_max_ms": 3000.0,
        "within_budget": 1,
    }
    assert doc["outcomes"][1]["within_budget"] is False
    assert "replay" not in report.text()
    report.violations.append(Violation(1.0, "two-answering", "#1 kill-node node1", "two MACs"))
    assert not report.passed and not report.to_json()["passed"]
    text = report.text()
    assert "two-answering during #1 kill-node node1: two MACs" in text
    assert "replay: hactl lab chaos --seed 42 --mode active-standby --faults 0" in text
    report.kinds, report.reached = ("pause", "failover"), 3
    assert report.replay().endswith(
        "--seed 42 --mode active-standby --faults 3 --kinds pause,failover"
    )
    report.violations.clear()
    report.stopped_early = "interrupted"
    assert not report.passed


def test_only_etcd_all_has_an_outage_bound_and_it_is_one_setting(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert {k: outage_bound(k) for k in KINDS if outage_bound(k) is not None} == {"etcd-all": 2.0}
    monkeypatch.setattr(verdict, "ETCD_ALL_OUTAGE", 1.0)
    assert {k: outage_bound(k) for k in KINDS if outage_bound(k) is not None} == {"etcd-all": 1.0}


def test_bad_options_get_one_line_before_anything_runs(tmp_path: Path) -> None:
    runner = CliRunner()
    lab = ["lab", "--run-dir", str(tmp_path / "lab"), "chaos"]
    both = runner.invoke(cli, [*lab, "--faults", "3", "--duration", "10"])
    assert both.exit_code == 1
    assert both.output.strip() == "hactl: give --faults or --duration, not both"
    unknown = runner.invoke(cli, [*lab, "--kinds", "kill-node,nap"])
    assert unknown.exit_code == 1
    assert unknown.output.startswith("hactl: unknown fault kind 'nap': choose from kill-node, ")
    assert not (tmp_path / "lab").exists()


class SlowHactl:
    """A lab whose `hactl` times out the first `slow` times it runs, then succeeds."""

    def __init__(self, slow: int) -> None:
        self.slow = slow
        self.calls: list[tuple[str, ...]] = []

    def hactl(self, *args: str) -> subprocess.CompletedProcess[str]:
        self.calls.append(args)
        if len(self.calls) <= self.slow:
            raise subprocess.TimeoutExpired(["hactl", *args], 60)
        return subprocess.CompletedProcess(["hactl", *args], 0, "", "")


def test_a_timed_out_operator_command_is_a_fault_error_and_a_heal_tries_again() -> None:
    lab = SlowHactl(slow=1)
    injector = Injector(cast(Any, lab))
    with pytest.raises(FaultError, match=r"^hactl pause did not finish within 60 s$"):
        injector.inject(Fault(1, "pause", "", 1.0))
    injector.inject(Fault(2, "pause", "", 1.0))  # the second call goes through
    lab.slow = len(lab.calls) + 1
    injector.heal()  # resume: times out once, then succeeds
    assert lab.calls[-2:] == [("resume",), ("resume",)]
    assert not injector.pending
