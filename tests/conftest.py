"""Suite-wide rules: lab tests (root + iproute2) run everywhere they can and never skip in CI."""

from __future__ import annotations

import os
import shutil

import pytest

pytest_plugins = ["tests.support.fixtures"]


def _lab_missing() -> str | None:
    if os.geteuid() != 0:
        return "needs root"
    if shutil.which("ip") is None:
        return "needs iproute2 (the ip command)"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    _group_for_workers(items)
    missing = _lab_missing()
    # In CI a skipped lab test would count as passing: there they run, and fail if they cannot.
    if missing is None or os.environ.get("CI"):
        return
    for item in items:
        if item.get_closest_marker("lab"):
            item.add_marker(pytest.mark.skip(reason=missing))


def _group_for_workers(items: list[pytest.Item]) -> None:
    """With `-n 2 --dist loadgroup` (make test): the lab tier runs in one worker, one test
    after another (labs share fixed subnets and CPU-sensitive timings); every other module
    runs whole in one worker (its module fixtures built once), beside the labs. The lab tier
    is the longest, so it is collected first and starts at once."""
    for item in items:
        lab = item.get_closest_marker("lab") is not None
        item.add_marker(pytest.mark.xdist_group("lab" if lab else item.nodeid.split("::")[0]))
    items.sort(key=lambda item: item.get_closest_marker("lab") is None)  # stable: lab first
