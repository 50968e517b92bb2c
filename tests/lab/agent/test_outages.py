"""Outages a VIP move cannot help: it stays where it is and the proxy answers for the backends.

Both demo backends down for 10 s: the VIP stays on exactly one node the whole time, clients get
the proxy's 502/503, then 200 again within 5 s of the backends' return. The VIP interface deleted
and created again under the agent that holds the VIP (a bond or VLAN recreated: same name, new
index, new MAC): the agent finds it by name and the VIP is served again.
"""

from __future__ import annotations

import asyncio
import signal
import time

import pytest

from tests.lab.agent.cluster import FACTOR, PROXY_DEATH, Lab, mac, neighbour, wait_or_show

pytestmark = pytest.mark.lab
OUTAGE = 10.0
BACK_WITHIN = 5.0


async def test_a_backend_outage_on_every_node_leaves_the_vip_in_place(lab: Lab) -> None:
    active, standby = lab.roles()
    started = time.monotonic()
    for node in (active, standby):
        assert node.backend is not None
        lab.c.lab.kill(node.backend)
    await asyncio.sleep(OUTAGE)
    returned = time.monotonic()
    for node in (active, standby):
        lab.c.start_backend(node)

    def served_again() -> bool:
        return "200" in lab.client_statuses(returned, time.monotonic())

    await wait_or_show(lab, served_again, 30, "a 200 once the backends are back")
    first = next(at for at, ok, _ in lab.client_log(returned) if ok)
    assert first - returned <= BACK_WITHIN, f"200 again only {first - returned:.1f} s after"
    assert lab.held_by(active.name) and not lab.w.gaps(lab.vip, started), (
        "the VIP must stay on one node through a shared backend outage"
    )
    during = lab.client_statuses(started + 1.0, returned)  # after the health checks' fall
    assert during, "the client probed during the outage"
    assert set(during) <= {"502", "503"}, f"clients must get the proxy's answer: {set(during)}"
    record = await lab.node(active.name)
    assert record is not None and record.healthy
    lab.check()


async def test_a_recreated_vip_interface_is_found_again(lab: Lab) -> None:
    active, _ = lab.roles()
    old_mac = mac(active.netns)
    started = time.monotonic()
    lab.c.lab.recreate_link(active.netns, f"{active.address}/24")
    new_mac = mac(active.netns)
    assert new_mac != old_mac

    def served() -> bool:
        rows = lab.client_log(started)
        holder = lab.w.holder(lab.vip)
        return bool(rows) and rows[-1][1] and len(holder) == 1

    await wait_or_show(lab, served, 30, "the VIP served again")
    (holder,) = lab.w.holder(lab.vip)
    node = lab.c.nodes[holder]
    assert neighbour(lab.c.client, lab.vip) == mac(node.netns), "announced by gratuitous ARP"
    log = lab.c.log(f"agent-{active.name}").read_text()
    assert "VIP interface was recreated" in log, "the agent looked the interface up by name"
    print(f"GAP interface recreated: client saw {lab.client_gap(started) * 1000:.0f} ms")
    lab.check()


async def test_a_hung_proxy_loses_the_vip_within_its_budget(lab: Lab) -> None:
    """SIGSTOP: the admin API accepts (the kernel's backlog) but never answers. Several
    misses in a row, probes overlapping, so detection still fits the budget."""
    active, standby = lab.roles()
    assert active.proxy is not None
    started = time.monotonic()
    lab.c.lab.kill(active.proxy, signal.SIGSTOP)
    try:
        await wait_or_show(lab, lambda: lab.held_by(standby.name), 30, "the VIP on the standby")
        lost = lab.w.lost_at(lab.vip, active.name, started)
        assert lost is not None
        print(f"GAP hung proxy: VIP dropped {(lost - started) * 1000:.0f} ms after SIGSTOP")
        assert lost - started <= PROXY_DEATH * FACTOR
    finally:
        lab.c.lab.kill(active.proxy, signal.SIGCONT)

    async def back() -> bool:
        record = await lab.node(active.name)
        return record is not None and record.healthy

    await wait_or_show(lab, back, 30, "the thawed proxy live again")
    assert lab.held_by(standby.name)
    lab.check()
