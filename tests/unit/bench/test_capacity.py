"""The capacity ladder's verdicts (pure)."""

from __future__ import annotations

from bench.capacity import Spread, Step, climb_together, highest
from bench.report import capacity_ratio


def step(offered: float, achieved: float, p99_ms: float, errors: int = 0) -> Step:
    return Step(offered, achieved, p99_ms * 1000, errors)


def test_highest_is_the_last_sustained_step_before_the_first_failure() -> None:
    steps = [
        step(4000, 4000, 2),
        step(8000, 7900, 9.9),
        step(12000, 12000, 11),
        step(16000, 16000, 1),
    ]
    assert highest(steps) == 8000


def test_a_step_short_of_its_rate_or_with_errors_is_not_sustained() -> None:
    assert not step(8000, 7500, 1).sustained  # under 95 % completed
    assert not step(8000, 8000, 1, errors=1).sustained
    assert not step(8000, 8000, 0).sustained  # no latency measured: nothing came back
    assert highest([step(4000, 3000, 1)]) == 0


def test_spread_ratio() -> None:
    assert Spread({"0": 480, "1": 520}, {}, 0.0).ratio == 520 / 480
    assert Spread({"0": 0, "1": 1000}, {}, 0.0).ratio == float("inf")


def test_a_rate_at_the_top_of_the_ladder_is_only_a_lower_bound() -> None:
    assert capacity_ratio(20_000, 25_000, 48_000) == "0.80×"
    assert capacity_ratio(48_000, 40_000, 48_000) == "≥ 1.20×"
    assert capacity_ratio(30_000, 48_000, 48_000) == "≤ 0.62×"
    assert capacity_ratio(48_000, 48_000, 48_000) == "both at the ladder's top"
    assert capacity_ratio(0, 48_000, 48_000) == "–"


def test_targets_climb_in_turns_and_a_missed_rung_is_measured_again_after_the_others() -> None:
    """a misses 8000 once (a burst from outside) and 12000 twice; b climbs to the top."""
    misses = {("a", 8000): 1, ("a", 12000): 2}
    calls: list[tuple[str, float]] = []

    def measure(name: str, rate: float) -> Step:
        calls.append((name, rate))
        missed = misses.get((name, rate), 0)
        misses[(name, rate)] = missed - 1
        return step(rate, rate / 2 if missed > 0 else rate, 1)

    steps = climb_together(["a", "b"], [4000, 8000, 12000, 16000], measure, lambda _: None)
    assert calls == [
        ("a", 4000), ("b", 4000),
        ("a", 8000), ("b", 8000), ("a", 8000),
        ("a", 12000), ("b", 12000), ("a", 12000),
        ("b", 16000),
    ]  # fmt: skip
    assert highest(steps["a"]) == 8000
    assert highest(steps["b"]) == 16000
    assert [s.offered for s in steps["a"]] == [4000, 8000, 12000]
