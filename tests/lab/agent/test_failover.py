"""VIP failover between real agents in network namespaces, with the real proxy and controller.

Every test runs a watcher that reads both nodes' addresses every few ms and
fails the test if the VIP is ever on both at once. The VIP gaps seen (time
with no node holding it) are printed; only correctness is asserted, with
generous timeouts.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from haproxy_py.cluster.config import EtcdConfig
from haproxy_py.cluster.intents import new_request_id
from haproxy_py.cluster.records import Request
from haproxy_py.cluster.requestflow import submit, wait_result
from haproxy_py.cluster.store import Store
from tests.lab.agent.cluster import (
    FACTOR,
    NODE_LOSS,
    PLANNED,
    RESTART,
    Lab,
    Watcher,
    cluster,
    wait_or_show,
)
from tests.lab.agent.support import plumbing

pytestmark = pytest.mark.lab
REPO = Path(__file__).resolve().parents[3]


async def test_kill_9_of_the_active_agent(lab: Lab) -> None:
    """The kernel drops the VIP; the standby takes it once the dead node's lease is gone."""
    active, standby = lab.roles()
    assert active.agent is not None
    started = time.monotonic()
    lab.c.lab.kill(active.agent)
    await wait_or_show(lab, lambda: lab.held_by(standby.name), 30, "the VIP on the standby")
    lost = lab.w.lost_at(lab.vip, active.name, started)
    assert lost is not None
    print(f"GAP kill -9: kernel removed the VIP {(lost - started) * 1000:.0f} ms after the kill")
    lab.report("kill -9", started, NODE_LOSS)
    await lab.client_follows("kill -9", standby, started, NODE_LOSS)
    lab.check()


async def test_etcd_cut_from_the_active_node(lab: Lab) -> None:
    """The active node fences itself before its lease ends; it rejoins as the standby."""
    active, standby = lab.roles()
    started = time.monotonic()
    lab.c.lab.partition(active.netns, [lab.c.etcd_host])
    await wait_or_show(lab, lambda: lab.held_by(standby.name), 30, "the VIP on the standby")
    lost = lab.w.lost_at(lab.vip, active.name, started)
    assert lost is not None
    print(f"GAP etcd cut: active fenced itself {(lost - started) * 1000:.0f} ms after the cut")
    lab.report("etcd cut", started, NODE_LOSS)
    await lab.client_follows("etcd cut", standby, started, NODE_LOSS)
    lab.c.lab.heal(active.netns)

    async def rejoined() -> bool:
        record = await lab.node(active.name)
        return record is not None and record.healthy and record.vips == ()

    await wait_or_show(
        lab, rejoined, 30, "the old active registered again, healthy, without the VIP"
    )
    assert lab.held_by(standby.name), "no failback by default: the VIP stays put"
    lab.check()


async def test_a_node_whose_backend_fails_gives_the_vip_to_a_readier_one(lab: Lab) -> None:
    """Readiness, not liveness: the proxy stays live, the controller moves the VIP after its
    hold-down because the standby has strictly more pools up."""
    active, standby = lab.roles()
    assert active.backend is not None
    started = time.monotonic()
    lab.c.lab.kill(active.backend)  # the proxy's only backend: readiness 0 of 1
    await wait_or_show(lab, lambda: lab.held_by(standby.name), 30, "the VIP on the standby")
    lost = lab.w.lost_at(lab.vip, active.name, started)
    assert lost is not None
    print(f"GAP readiness: active gave the VIP away {(lost - started) * 1000:.0f} ms after")
    lab.report("readiness", started)
    await lab.client_follows("readiness", standby, started)
    record = await lab.node(active.name)
    assert record is not None and record.healthy and record.ready == 0
    lab.c.start_backend(active)

    async def ready_again() -> bool:
        record = await lab.node(active.name)
        return record is not None and record.ready == 1

    await wait_or_show(lab, ready_again, 30, "the old active ready again")
    assert lab.held_by(standby.name)
    lab.check()


async def test_sigterm_hands_over_at_once(lab: Lab) -> None:
    active, standby = lab.roles()
    assert active.agent is not None
    started = time.monotonic()
    lab.c.lab.kill(active.agent, signal.SIGTERM)
    await wait_or_show(lab, lambda: lab.held_by(standby.name), 30, "the VIP on the standby")
    lab.report("SIGTERM", started, RESTART)
    await lab.client_follows("SIGTERM", standby, started, RESTART)
    agent = active.agent
    await wait_or_show(lab, lambda: not lab.c.lab.alive(agent), 30, "the agent to exit")
    assert "agent stopped" in lab.c.log(f"agent-{active.name}").read_text()
    assert await lab.node(active.name) is None, "the revoked lease takes the node record with it"
    lab.check()


def ws_events(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.endswith("}")]


async def test_planned_move(lab: Lab) -> None:
    """The VIP moves; the old node closes the VIP's WebSockets with 1001 and they reconnect to
    the new owner."""
    active, standby = lab.roles()
    events = lab.c.root / "wsclient.out"
    client = lab.c.start_client("wsclient", lab.vip, "8080", "120", str(events))
    try:
        await wait_or_show(lab, lambda: bool(ws_events(events)), 30, "the WebSocket connected")
        assert ws_events(events)[0]["via"] == active.name
        # Idle, as the client it models is: no delayed ACK of its last echo still due when the
        # VIP moves (a packet from the client between the new owner's ARP and the 1001 gets a
        # reset from the new owner, so such a client sees 1006; it reconnects at once as well).
        await asyncio.sleep(0.5)
        started = time.monotonic()
        request = Request(
            id=new_request_id(time.time()), kind="move", vip=lab.vip, target=standby.name
        )
        await submit(lab.store, request)
        answered = await wait_result(lab.store, request.id, 30)
        assert answered.result is not None
        assert answered.result.status == "done", answered.result.message
        await wait_or_show(lab, lambda: lab.held_by(standby.name), 30, "the VIP on the standby")
        print(f"GAP planned move: controller reports gap_ms={answered.result.gap_ms}")
        lab.report("planned move", started, PLANNED)
        await lab.client_follows("planned move", standby, started)

        await wait_or_show(
            lab, lambda: len(ws_events(events)) >= 4, 30, "the WebSocket to reconnect and echo"
        )
        _, closed, connected, echoed = ws_events(events)[:4]
        assert (closed["event"], closed["code"]) == ("closed", 1001)
        assert (connected["event"], connected["via"]) == ("connected", standby.name)
        assert (echoed["event"], echoed["via"]) == ("echoed", standby.name)
        lost = lab.w.lost_at(lab.vip, active.name, started)
        assert lost is not None and closed["at"] >= lost, "the 1001 came before the VIP left"
        print(
            "GAP planned move: WebSocket closed with 1001 "
            f"{(closed['at'] - lost) * 1000:.0f} ms after the VIP left the old node, reconnected "
            f"to {connected['via']} {(connected['at'] - closed['at']) * 1000:.0f} ms after the "
            f"close ({(connected['at'] - started) * 1000:.0f} ms after the move request)"
        )
    finally:
        lab.c.lab.kill(client)
    agent_log = lab.c.log(f"agent-{active.name}").read_text()
    assert "released VIP's clients told to reconnect" in agent_log
    await asyncio.sleep(0.5)  # a wrong re-add of the VIP would show up in the watcher meanwhile
    assert lab.held_by(standby.name)
    lab.check()


async def test_frozen_agent_loses_the_vip_and_does_not_take_it_back(lab: Lab) -> None:
    """SIGSTOP: only the kernel lifetime can remove the VIP. After SIGCONT the agent must find
    its lease gone and come back as a standby, never holding the VIP beside the new owner."""
    active, standby = lab.roles()
    assert active.agent is not None
    started = time.monotonic()
    lab.c.lab.kill(active.agent, signal.SIGSTOP)
    try:
        await wait_or_show(lab, lambda: lab.held_by(standby.name), 30, "the VIP on the standby")
        lost = lab.w.lost_at(lab.vip, active.name, started)
        assert lost is not None
        print(f"GAP agent frozen: kernel removed the VIP {(lost - started) * 1000:.0f} ms after")
        lab.report("agent frozen", started, NODE_LOSS)
    finally:
        lab.c.lab.kill(active.agent, signal.SIGCONT)

    async def rejoined() -> bool:
        record = await lab.node(active.name)
        return record is not None and record.healthy and record.vips == ()

    await wait_or_show(lab, rejoined, 30, "the thawed agent registered again as a standby")
    await asyncio.sleep(1.0)  # give a wrong re-add every chance to show up in the watcher
    assert lab.held_by(standby.name)
    lab.check()


async def test_active_active_survivor_takes_every_vip(tmp_path: Path) -> None:
    """Two VIPs (placed by whichever node was healthy first: no rebalancing without failback);
    kill -9 of the first VIP's holder leaves both VIPs on the survivor."""
    with (
        plumbing(tmp_path, "hvl") as (plumb, net),
        cluster(tmp_path, plumb, net, vips=2, mode="active-active") as c,
    ):
        watcher = Watcher({n.name: n.netns for n in c.nodes.values()}, c.vips)
        watcher.start()
        store = Store(EtcdConfig((c.etcd.endpoint,), timeout=2.0), "lab")
        lab = Lab(c, watcher, store)
        try:

            def placed() -> bool:
                return all(len(watcher.holder(vip)) == 1 for vip in c.vips)

            await wait_or_show(lab, placed, 60, "every VIP on a node")
            victim = c.nodes[next(iter(watcher.holder(c.vips[0])))]
            survivor = next(n for n in c.nodes.values() if n is not victim)
            assert victim.agent is not None
            started = time.monotonic()
            c.lab.kill(victim.agent)
            await wait_or_show(
                lab,
                lambda: all(watcher.holder(v) == {survivor.name} for v in c.vips),
                30,
                "both VIPs on the survivor",
            )
            for gap, source, target in watcher.gaps(c.vips[0], started):
                print(
                    f"GAP active-active kill -9: {gap * 1000:.0f} ms unowned ({source} -> {target})"
                )
                assert gap <= NODE_LOSS * FACTOR, f"unowned {gap:.3f} s after a node loss"
            lab.check()
        finally:
            watcher.stop()
            await store.close()
