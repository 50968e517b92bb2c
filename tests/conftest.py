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
    missing = _lab_missing()
    # In CI a skipped lab test would count as passing: there they run, and fail if they cannot.
    if missing is None or os.environ.get("CI"):
        return
    for item in items:
        if item.get_closest_marker("lab"):
            item.add_marker(pytest.mark.skip(reason=missing))
