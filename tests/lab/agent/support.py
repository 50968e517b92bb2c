"""Shared pieces of the agent's namespace tests: address sampling and the namespaces' plumbing
(the stand-in proxy admin API is `tests.support.admin_stand_in`)."""

from __future__ import annotations

import contextlib
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

from haproxy_py.lab.netns import Plumbing, free_subnet

PREFIX = "hv"  # every namespace, bridge and veth of these tests starts with it


def addresses(netns: str, dev: str = "eth0") -> dict[str, int | None]:
    """IPv4 addresses on `dev` in `netns` -> remaining valid lifetime (None = forever)."""
    out = subprocess.run(
        ["ip", "-n", netns, "-j", "-4", "addr", "show", "dev", dev],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    found: dict[str, int | None] = {}
    for link in json.loads(out or "[]"):
        for info in link.get("addr_info", []):
            valid = info.get("valid_life_time")
            found[info["local"]] = None if valid in (None, 4294967295) else int(valid)
    return found


@contextlib.contextmanager
def plumbing(tmp_path: Path, prefix: str) -> Iterator[tuple[Plumbing, str]]:
    """A Plumbing under `prefix` on a free /24, torn down whatever happens; yields (it, subnet)."""
    lab = Plumbing(prefix, tmp_path / f"{prefix}-lab.json")
    try:
        yield lab, str(free_subnet(200).network_address).rsplit(".", 1)[0]
    finally:
        lab.teardown()
