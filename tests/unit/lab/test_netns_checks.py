"""The lab's plumbing refuses what must never reach a kernel: foreign addresses, bad names."""

from __future__ import annotations

from pathlib import Path

import pytest

from haproxy_py.lab import netns
from haproxy_py.lab.netns import NetnsError, Plumbing


def test_addresses_outside_the_lab_range_are_refused() -> None:
    """A typo must never put a real network's address on a lab interface."""
    with pytest.raises(NetnsError, match=r"198\.18\.0\.0/15"):
        netns.lab_interface("10.0.0.1/24")
    with pytest.raises(NetnsError, match="prefix length"):
        netns.lab_interface("198.18.0.1/33")


def test_bad_prefix_and_long_names_are_refused(tmp_path: Path) -> None:
    with pytest.raises(NetnsError, match="prefix"):
        Plumbing("has space", tmp_path / "s.json")
    plumbing = Plumbing("hlxxxxxx", tmp_path / "s.json")
    with pytest.raises(NetnsError, match="longer than 15"):
        plumbing._name("much-too-long")
