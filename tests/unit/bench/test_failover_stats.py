"""Percentiles, summaries, split-brain time and the WebSocket fleet's return time."""

from __future__ import annotations

import pytest

from bench.failover.stats import Back, Dual, all_back, dual_time, percentile, summarize
from bench.failover.wsfleet import Client, Fleet


def test_percentile_interpolates_between_ranks() -> None:
    values = [40.0, 10.0, 30.0, 20.0]
    assert percentile(values, 0) == 10.0
    assert percentile(values, 50) == 25.0
    assert percentile(values, 100) == 40.0
    assert percentile(list(range(1, 21)), 95) == pytest.approx(19.05)


def test_percentile_of_nothing_and_out_of_range() -> None:
    assert percentile([], 50) is None
    with pytest.raises(ValueError, match=r"0\.\.100"):
        percentile([1.0], 101)


def test_summary_counts_trials_without_a_value_as_missing() -> None:
    s = summarize([100.0, None, 300.0, 200.0])
    assert (s.count, s.missing, s.p50, s.max) == (4, 1, 200.0, 300.0)
    empty = summarize([None])
    assert (empty.count, empty.missing, empty.p50, empty.p95, empty.max) == (1, 1, None, None, None)


def test_dual_time_sums_confirmed_overlaps_inside_the_window() -> None:
    changes = [
        (0.0, "v", ("node1",)),
        (10.0, "v", ("node1", "node2")),
        (10.5, "v", ("node2",)),
        (20.0, "v", ("node1", "node2")),
        (21.0, "v", ("node2",)),
    ]
    got = dual_time(changes, confirmed=[10.2, 20.5], start=5.0, end=30.0)
    assert got.seconds == pytest.approx(1.5)
    assert not got.ongoing


def test_dual_time_ignores_a_single_unconfirmed_sweep() -> None:
    """A VIP moving while one sweep reads the namespaces looks doubled for that sweep only."""
    changes = [(1.0, "v", ("node1", "node2")), (1.003, "v", ("node2",))]
    assert dual_time(changes, confirmed=[], start=0.0, end=2.0) == Dual(0.0, False)


def test_dual_time_clips_to_the_window_and_reports_a_vip_still_doubled() -> None:
    """keepalived leaves the VIP on a SIGKILLed master: two holders until the window closes."""
    changes = [(0.0, "v", ("node1",)), (3.0, "v", ("node1", "node2"))]
    got = dual_time(changes, confirmed=[3.1], start=1.0, end=4.0)
    assert got.seconds == pytest.approx(1.0)
    assert got.ongoing


def test_dual_time_before_the_fault_does_not_count() -> None:
    changes = [(0.0, "v", ("a", "b")), (1.0, "v", ("b",))]
    assert dual_time(changes, confirmed=[0.5], start=2.0, end=3.0) == Dual(0.0, False)


def test_all_back_is_the_last_client_to_reconnect() -> None:
    backs = [Back(0.5, False), Back(1.5, True), Back(2.5, True)]
    assert all_back(backs, fault=1.0) == (2, pytest.approx(1.5))


def test_all_back_when_every_connection_survived_is_immediate() -> None:
    assert all_back([Back(0.2, False), Back(0.7, False)], fault=1.0) == (0, 0.0)


def test_a_client_is_back_only_on_a_serving_node() -> None:
    client = Client([(0.0, "node1"), (5.2, None), (5.9, "node1"), (6.1, None), (6.3, "node2")])
    assert client.back(5.0, {"node2"}) == Back(6.3, True)
    assert client.back(5.0, {"node1"}) is None
    assert client.back(7.0, {"node2"}) == Back(6.3, False)  # survived a fault at 7.0


def test_a_disconnected_client_is_not_back() -> None:
    client = Client([(0.0, "node1"), (5.2, None)])
    assert client.back(5.0, {"node1", "node2"}) is None
    assert client.node is None
    assert Client().back(0.0, {"node1"}) is None


def test_the_fleet_is_back_only_when_every_client_is() -> None:
    fleet = Fleet("http://198.18.0.1/echo", 2)
    fleet.clients[0].events.append((1.0, "node2"))
    assert fleet.back(0.5, {"node2"}) is None
    fleet.clients[1].events.append((0.2, "node2"))
    assert fleet.back(0.5, {"node2"}) == [Back(1.0, True), Back(0.2, False)]
