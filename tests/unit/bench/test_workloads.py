"""Workload command lines, outside-load arithmetic and name selection."""

from __future__ import annotations

import pytest

from bench.loadgen import WORKLOADS
from bench.quiet import outside_cores
from bench.runner import selected


def test_paced_websocket_arguments() -> None:
    argv = WORKLOADS["ws-small"].argv("127.0.0.1:8080", {"proxy": [10, 11], "backend": [12]})
    assert "-url=ws://127.0.0.1:8080/ws" in argv
    assert "-rate=4000" in argv and "-c=100" in argv and "-size=64" in argv
    assert "-pids=proxy=10,proxy=11,backend=12" in argv
    assert "-binary" not in argv


def test_large_messages_are_binary_and_closed_loop() -> None:
    argv = WORKLOADS["ws-large"].argv("127.0.0.1:8080", {})
    assert "-binary" in argv and "-rate=0" in argv and "-size=65536" in argv


def test_every_run_has_a_hard_limit_beyond_its_window() -> None:
    for workload in WORKLOADS.values():
        limit = next(a for a in workload.argv("h:1", {}) if a.startswith("-limit="))
        assert (
            float(limit.removeprefix("-limit=").removesuffix("s"))
            > workload.warmup_s + workload.window_s
        )


def test_outside_cores() -> None:
    """150 busy ticks, 50 of them ours, over 2 s at 100 Hz: half a core used by others."""
    assert outside_cores(150, 50, 2.0, 100) == 0.5
    assert outside_cores(40, 50, 2.0, 100) == 0.0
    assert outside_cores(10, 0, 0.0, 100) == 0.0


def test_selected_names() -> None:
    available = {"a": 1, "b": 2, "c": 3}
    assert selected(None, available) == ["a", "b", "c"]
    assert selected("c, a", available) == ["c", "a"]
    with pytest.raises(SystemExit, match="unknown name"):
        selected("a,zz", available)
