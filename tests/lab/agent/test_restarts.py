"""Routine operations leave the node in service: each daemon restarted alone, on the standby and
on the active node, by SIGTERM and by SIGKILL, with real daemons, real etcd and namespaces.

On the standby nothing visible happens (the VIP never moves); on the active node the VIP moves to
the standby and the restarted node comes back as a healthy standby. The watcher fails any test in
which the VIP is ever on two nodes.
"""

from __future__ import annotations

import signal
import time

import pytest

from haproxy_py.cluster.intents import new_request_id
from haproxy_py.cluster.records import Request
from haproxy_py.cluster.requestflow import submit, wait_result
from tests.lab.agent.cluster import FACTOR, RESTART, Lab, in_service, restart, wait_or_show

pytestmark = pytest.mark.lab


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
@pytest.mark.parametrize("daemon", ["agent", "proxy"])
async def test_a_restarted_daemon_returns_its_node_to_service(
    lab: Lab, daemon: str, sig: int
) -> None:
    active, standby = lab.roles()
    name = f"{daemon} {signal.Signals(sig).name}"

    started = time.monotonic()
    await restart(lab, standby, daemon, sig)
    await wait_or_show(lab, in_service(lab, standby, started), 30, "the standby back in service")
    assert lab.held_by(active.name) and not lab.w.gaps(lab.vip, started), (
        f"{name} on the standby must not move the VIP"
    )
    assert lab.client_gap(started) == 0, "clients of the active node saw no failure"

    started = time.monotonic()
    await restart(lab, active, daemon, sig)
    await wait_or_show(lab, lambda: lab.held_by(standby.name), 30, "the VIP on the standby")
    await wait_or_show(lab, in_service(lab, active, started), 30, "the old active back in service")
    await lab.client_follows(name, standby, started)
    assert lab.held_by(standby.name), "it comes back as the standby (no failback by default)"
    if sig == signal.SIGTERM:  # a clean stop, of the agent or of the proxy
        gap = lab.client_gap(started)
        assert gap <= RESTART * FACTOR, f"clean stop cost clients {gap * 1000:.0f} ms"
    log = lab.c.log(f"proxy-{active.name}").read_text()
    assert "undrained" not in log or daemon != "agent", "the agent never drained the proxy"
    lab.check()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
async def test_a_restarted_controller_changes_nothing_and_leads_again(lab: Lab, sig: int) -> None:
    active, standby = lab.roles()
    before = await lab.store.get(lab.store.schema.leader)
    assert before is not None
    started = time.monotonic()
    await restart(lab, active, "controller", sig)

    async def leading() -> bool:
        kv = await lab.store.get(lab.store.schema.leader)
        return kv is not None and kv.create_revision != before.create_revision

    await wait_or_show(lab, leading, 30, "the restarted controller leading")
    await wait_or_show(lab, in_service(lab, standby, 0), 30, "the standby in service")
    assert lab.held_by(active.name) and not lab.w.gaps(lab.vip, started)
    assert lab.client_gap(started) == 0
    lab.check()


async def test_an_operators_drain_survives_a_restart_until_undrained(lab: Lab) -> None:
    active, standby = lab.roles()

    async def ask(kind: str) -> None:
        request = Request(id=new_request_id(time.time()), kind=kind, node=active.name)
        await submit(lab.store, request)
        answered = await wait_result(lab.store, request.id, 30)
        assert answered.result is not None and answered.result.status == "done"

    await ask("drain")
    await wait_or_show(lab, lambda: lab.held_by(standby.name), 30, "the VIP off the drained node")
    for daemon in ("agent", "proxy"):
        started = time.monotonic()
        await restart(lab, active, daemon, signal.SIGTERM)
        await wait_or_show(lab, in_service(lab, active, started), 30, f"{daemon} back")
        view = await lab.store.read_view()
        assert view.settings is not None and active.name in view.settings.drained
    assert lab.held_by(standby.name), "a drained node gets no VIP, restarted or not"
    await ask("undrain")
    view = await lab.store.read_view()
    assert view.settings is not None and active.name not in view.settings.drained
    lab.check()
