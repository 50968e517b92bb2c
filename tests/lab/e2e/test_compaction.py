"""etcd compacts while the real daemons watch: a node cut off across a compaction comes back,
its agent and controller re-read once, and the node then does exactly what etcd says.

The lab compacts every 10 minutes on its own; here the test compacts at once
(`hactl etcd compact`) while one standby node is partitioned, so that its
daemons' watches return to a revision etcd no longer has.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from haproxy_py.cluster import maintenance
from haproxy_py.cluster.store import Store
from haproxy_py.lab import control
from haproxy_py.lab.layout import CLUSTER
from tests.support.wait import eventually

from .support import hactl_json, lab_session, settle, view

pytestmark = [pytest.mark.lab, pytest.mark.timeout(600)]
RESYNC = "etcd watch behind compacted history"


def _logged(lab: control.Lab, node: str, process: str, text: str) -> bool:
    try:
        return text in lab.paths.log(f"{node}/{process}").read_text()
    except FileNotFoundError:
        return False


def _compact(lab: control.Lab) -> int:
    async def run() -> int:
        async with Store(lab.etcd_config(), CLUSTER) as store:
            return await maintenance.compact(store)

    return asyncio.run(run())


def test_a_node_back_from_behind_a_compaction_misses_nothing(tmp_path: Path) -> None:
    with lab_session(tmp_path, "active-standby", "compaction", nodes=3) as lab:
        before = settle(lab)
        vip = lab.layout.vips[0]
        owner = before.owner(vip)
        cut, other = [n.name for n in lab.layout.nodes if n.name != owner][:2]

        lab.partition(cut)
        eventually(
            lambda: _logged(lab, cut, "agent", "etcd watch down"), 30, f"{cut}'s watch to go down"
        )
        # History the cut-off node has not seen, then compacted away.
        done = lab.hactl("failover", "--to", other, "--yes")
        assert done.returncode == 0, done.stdout + done.stderr
        done = lab.hactl("pause")
        assert done.returncode == 0, done.stdout + done.stderr
        _compact(lab)
        lab.heal(cut)

        for process in ("agent", "controller"):
            eventually(
                lambda process=process: _logged(lab, cut, process, RESYNC),
                60,
                f"{cut}'s {process} to resync after the compaction",
            )
        # It missed nothing: it holds no VIP, failover is still paused, and the very next
        # change reaches it through its watch.
        eventually(lambda: (v := view(lab)) is not None and cut in v.nodes, 30, f"{cut} back")
        status = hactl_json(lab, "status")
        assert status["paused"] is True
        assert [n["vips"] for n in status["nodes"] if n["name"] == cut] == [[]]
        done = lab.hactl("resume")
        assert done.returncode == 0, done.stdout + done.stderr
        done = lab.hactl("failover", "--to", cut, "--yes")
        assert done.returncode == 0, done.stdout + done.stderr
        eventually(
            lambda: (v := view(lab)) is not None and v.owner(vip) == cut, 10, f"{vip} held by {cut}"
        )
        eventually(
            lambda: (answer := control.whoami(vip)) is not None and answer[0] == cut,
            10,
            f"{cut} to answer on {vip}",
        )
