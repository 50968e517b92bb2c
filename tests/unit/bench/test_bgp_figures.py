"""The BGP benchmarks' pure figures: how long new connections failed, which flows broke where."""

from __future__ import annotations

import pytest

from bench.bgp import failing
from bench.bgpflows import broken, connected, victim_outcome
from haproxy_py.lab.client import Attempt


def test_failing_is_the_start_of_the_last_failure_after_the_fault() -> None:
    attempts = [
        Attempt(9.0, 9.1, None),  # before the fault: not counted
        Attempt(10.05, 10.06, "node1"),
        Attempt(10.10, 10.11, None),
        Attempt(10.20, 11.20, None),
        Attempt(10.30, 10.31, "node2"),
    ]
    assert failing(attempts, 10.0) == pytest.approx(0.2)


def test_no_failure_after_the_fault_is_zero() -> None:
    assert failing([Attempt(10.1, 10.2, "node1"), Attempt(9.0, 9.5, None)], 10.0) == 0.0


def test_broken_counts_errors_in_the_window_except_on_the_node_that_went() -> None:
    events = [
        {"at": 1.0, "event": "error", "via": "node1"},  # before the window
        {"at": 2.0, "event": "error", "via": "node4"},  # the removed node's own
        {"at": 2.5, "event": "error", "via": "node2"},
        {"at": 2.6, "event": "closed", "via": "node2"},  # a clean close is not a break
        {"at": 3.0, "event": "error", "via": "node3"},  # at the window's end: outside
    ]
    assert broken(events, 2.0, 3.0, "node4") == {"node2": 1}


def test_connected_keeps_each_clients_latest_node() -> None:
    events = [
        {"client": 1, "event": "connected", "via": "node1"},
        {"client": 2, "event": "connected", "via": "node2"},
        {"client": 1, "event": "error", "via": "node1"},
        {"client": 1, "event": "connected", "via": "node3"},
    ]
    assert connected(events) == {1: "node3", 2: "node2"}


def test_victim_outcome_counts_its_ends_1001s_breaks_and_failed_connects_in_the_window() -> None:
    events = [
        {"at": 1.0, "event": "closed", "code": 1001, "via": "node4"},  # before the window
        {"at": 2.0, "event": "closed", "code": 1001, "via": "node4"},
        {"at": 2.05, "event": "closed", "code": 1001, "via": "node2"},  # another node's
        {"at": 2.1, "event": "closed", "code": 1000, "via": "node4"},
        {"at": 2.15, "event": "ended", "via": "node4"},  # its client ended it
        {"at": 2.2, "event": "error", "via": "node4"},
        {"at": 2.3, "event": "error", "via": "node1"},  # another node's: counted elsewhere
        {"at": 2.4, "event": "connect_failed"},
        {"at": 5.0, "event": "connect_failed"},  # after the window
    ]
    assert victim_outcome(events, 2.0, 5.0) == {
        "ended_by_client": 1,
        "closed_1001": 1,
        "broken_on_victim": 1,
        "connect_failed": 1,
    }
