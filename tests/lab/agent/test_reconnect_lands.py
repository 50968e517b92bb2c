"""The agent's clean stop: its WebSocket clients are told to reconnect only once the new owner
holds the VIP, so every reconnect is answered at once.

A 1001 sent while no node answers for the VIP sends its client's SYN into a
void, to wait out the 1 s SYN retransmit. Here every node-record write of the
agents takes 1.2 s (a slow etcd), the stopping agent's release acknowledgement
included, so the VIP reaches its next owner more than a second after the old
owner let it go. A wire capture in the client's namespace sees every connection
attempt of theirs to the VIP: none may go unanswered, none may be retransmitted.
"""

from __future__ import annotations

import functools
import signal
import sys
import time

import pytest

from bench.failover.wire import summarize_wire
from haproxy_py.lab.echoclients import read
from haproxy_py.lab.netns import ip
from tests.lab.agent.cluster import REPO, Lab, in_service, restart, wait_or_show

pytestmark = pytest.mark.lab
STOPS = 2
CLASSES = ("2", "2", "2")  # idle, periodic, continuous


@pytest.mark.parametrize("lab", [(1.2, "every")], ids=["records-late"], indirect=True)
async def test_clients_of_a_stopped_agent_reconnect_to_the_new_owner_at_once(lab: Lab) -> None:
    out, wire = lab.c.root / "echo.out", lab.c.root / "wire.out"
    clients = sum(map(int, CLASSES))
    spawn = lab.c.lab.spawn
    capture = spawn(
        lab.c.client,
        [sys.executable, "-m", "bench.failover.wire", lab.vip, "8080", "300", str(wire)],
        label="wire",
        log=lab.c.log("wire"),
        cwd=REPO,
    )
    url = f"http://{lab.vip}:8080/echo"
    source = f"{lab.c.net}.60"  # the WebSocket clients' own address (the prober has another)
    ip("addr", "add", f"{source}/24", "dev", "eth0", netns=lab.c.client)
    echo = ["haproxy_py.lab.echoclients", "--sources", source, url, "300", str(out)]
    fleet = spawn(
        lab.c.client,
        [sys.executable, "-m", *echo, *CLASSES],
        label="echoclients",
        log=lab.c.log("echoclients"),
        cwd=REPO,
    )

    def everyone_on(node: str, after: float) -> bool:
        events = [e for e in read(str(out)) if e["at"] >= after and e["event"] == "connected"]
        return len({e["client"] for e in events if e["via"] == node}) == clients

    try:
        active, standby = lab.roles()
        await wait_or_show(lab, lambda: everyone_on(active.name, 0), 60, "every client on")
        for stop in range(STOPS):
            started = time.monotonic()
            await restart(lab, active, "agent", signal.SIGTERM)
            moved = functools.partial(everyone_on, standby.name, started)
            await wait_or_show(lab, moved, 30, "every client on the new owner")
            await wait_or_show(lab, in_service(lab, active, started), 30, "back in service")
            ends = [e for e in read(str(out)) if e["at"] >= started and e["event"] == "closed"]
            assert {e["client"] for e in ends if e["code"] == 1001} == set(range(clients)), stop
            active, standby = standby, active
    finally:
        lab.c.lab.kill(fleet)
        lab.c.lab.kill(capture, signal.SIGTERM)
        # the capture reads what is still queued when stopped (up to 10 s), then ends
        await wait_or_show(lab, lambda: not lab.c.lab.alive(capture), 30, "the capture ended")
    ours = [s for s in read(str(wire)) if str(s.get("client", source)).startswith(source)]
    summary = summarize_wire(ours)
    print(f"wire: {summary}")
    assert summary["connections"] >= STOPS * clients
    assert summary["unanswered"] == summary["syn_retransmits"] == 0, summary
    assert summary["capture_dropped"] == 0, summary
    errors = [e for e in read(str(out)) if e["event"] == "error"]
    assert not errors, f"connections that ended without a close frame: {errors[:5]}"
    lab.check()
