"""The loop's only policy of its own: which settings the leader applies."""

from __future__ import annotations

from controller.loop import desired_settings
from haproxy_py.cluster.config import ClusterConfig
from haproxy_py.cluster.records import ClusterPolicy

FILE = ClusterConfig("c", "active-active", ("198.18.0.1", "198.18.0.2"), True, 12.0)


def test_file_policy_wins_but_pause_and_drain_survive() -> None:
    """Restarting a controller with a new config must not undo an operator's pause or drain."""
    stored = ClusterPolicy("active-standby", ("198.18.0.9",), False, 30.0, True, ("n2",), 44)
    wanted = desired_settings(FILE, stored)
    assert (wanted.mode, wanted.vips, wanted.failback, wanted.failback_hold) == (
        "active-active",
        ("198.18.0.1", "198.18.0.2"),
        True,
        12.0,
    )
    assert (wanted.paused, wanted.drained, wanted.mod_revision) == (True, ("n2",), 44)
    assert not wanted.same_content(stored)
    assert wanted.same_content(desired_settings(FILE, wanted))


def test_first_start_writes_defaults_for_the_rest() -> None:
    wanted = desired_settings(FILE, None)
    assert (wanted.paused, wanted.drained, wanted.mod_revision) == (False, (), 0)
