"""Planned failover: every WebSocket client gets its 1001, whatever the timing.

Echo clients of three classes (idle, a frame every 100 ms, send-wait-send) and
HTTP keep-alive clients stay connected through the VIP while it moves back and
forth several times. Every connection the move ends must end with a close frame
1001 (HTTP: a FIN), never a reset, and every client must reconnect to the new
owner at once (no SYN retransmit). The second run lets each agent write its
node record listing a VIP it took 0.5 s late, so the old owner's 1001 leaves
long after the new owner's gratuitous ARP: only the new owner's grace period (mid-stream
segments dropped, not reset) keeps the clients' packets of that window from
being answered with a reset, so this cannot pass by timing. The third run's
2.5 s is close to the old owner's longest wait (3 s): the grace must outlast it.
A capture on the client's wire checks the other end: a client's answer to its
1001 that reaches the old owner (the VIP came back) is read, never reset.

The proxies run as the hardened unit runs them (`haproxy_py.lab.activate`):
their listening socket comes from outside with IP_TRANSPARENT set, and they hold
no capability but CAP_NET_BIND_SERVICE, so they could not set IP_TRANSPARENT
themselves: the 1001s from an address already gone leave on what they inherited.
"""

from __future__ import annotations

import functools
import signal
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from bench.failover.wire import reset_by_closer
from haproxy_py.cluster.intents import new_request_id
from haproxy_py.cluster.records import Request
from haproxy_py.cluster.requestflow import submit, wait_result
from haproxy_py.lab.echoclients import read
from tests.lab.agent.cluster import REPO, Lab, wait_or_show

pytestmark = pytest.mark.lab
MOVES = 4
CLASSES = (2, 2, 3, 2)  # idle, periodic, continuous, HTTP keep-alive
SYN_RETRANSMIT = 1.0  # a reconnect that waited for one would take at least this long
CAP_NET_BIND_SERVICE = 10


def capabilities(pid: int) -> int:
    """The effective capability mask of a process."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("CapEff:"):
            return int(line.split()[1], 16)
    raise AssertionError(f"no CapEff in /proc/{pid}/status")


def since(events: list[dict[str, Any]], at: float, kind: str) -> list[dict[str, Any]]:
    return [e for e in events if e["at"] >= at and e["event"] == kind]


@pytest.mark.parametrize(
    "lab", [0.0, 0.5, 2.5], ids=["prompt", "record-late", "record-later"], indirect=True
)
async def test_every_websocket_client_gets_1001_through_planned_moves(lab: Lab) -> None:
    out, wire = lab.c.root / "echo.out", lab.c.root / "wire.out"
    clients = sum(CLASSES)
    capture = lab.c.lab.spawn(
        lab.c.client,
        [sys.executable, "-m", "bench.failover.wire", lab.vip, "8080", "300", str(wire)],
        label="wire",
        log=lab.c.log("wire"),
        cwd=REPO,
    )
    fleet = lab.c.lab.spawn(
        lab.c.client,
        [
            sys.executable,
            "-m",
            "haproxy_py.lab.echoclients",
            f"http://{lab.vip}:8080/echo",
            "300",
            str(out),
            *map(str, CLASSES),
        ],
        label="echoclients",
        log=lab.c.log("echoclients"),
        cwd=REPO,
    )
    try:
        for node in lab.c.nodes.values():
            assert node.proxy is not None
            assert capabilities(node.proxy.pid) == 1 << CAP_NET_BIND_SERVICE, node.name
        active, standby = lab.roles()

        def everyone_on(node: str, after: float) -> bool:
            """Every client connected through `node` after `after`; the senders echoed."""
            events = read(str(out))
            connected = {e["client"] for e in since(events, after, "connected") if e["via"] == node}
            echoed = {e["client"] for e in since(events, after, "echo") if e["via"] == node}
            senders = set(range(CLASSES[0], clients))
            return len(connected) == clients and senders <= echoed

        await wait_or_show(lab, lambda: everyone_on(active.name, 0), 60, "every client echoed")
        source, target = active, standby
        for move in range(MOVES):
            started = time.monotonic()
            moved_to = target.name
            request = Request(
                id=new_request_id(time.time()), kind="move", vip=lab.vip, target=target.name
            )
            await submit(lab.store, request)
            answered = await wait_result(lab.store, request.id, 30)
            assert answered.result is not None and answered.result.status == "done"
            await wait_or_show(
                lab,
                functools.partial(everyone_on, moved_to, started),
                30,
                f"move {move}: reconnects",
            )
            events = read(str(out))
            clean = {1001, "FIN"}  # a WebSocket's close frame, an HTTP connection's FIN
            ends = [e for e in since(events, started, "closed") if e["code"] in clean]
            closed = {e["client"] for e in ends}
            assert closed == set(range(clients)), (
                f"move {move}: no clean close for some: {events[-20:]}"
            )
            for end in ends:  # the reconnect lands on the new owner at once (no SYN retransmit)
                back = min(
                    e["at"]
                    for e in since(events, end["at"], "connected")
                    if e["client"] == end["client"]
                )
                assert back - end["at"] < SYN_RETRANSMIT, f"move {move}: slow reconnect {end}"
            source, target = target, source
        errors = [e for e in read(str(out)) if e["event"] == "error"]
        assert not errors, f"connections that ended without a close frame: {errors[:10]}"
        other = {e["code"] for e in read(str(out)) if e["event"] == "closed"} - {1001, "FIN"}
        assert not other, f"close codes other than 1001: {other}"
    finally:
        lab.c.lab.kill(fleet)
        lab.c.lab.kill(capture, signal.SIGTERM)
        await wait_or_show(lab, lambda: not lab.c.lab.alive(capture), 30, "the capture ended")
    # The VIP came back to each old owner a move later: a socket it had closed would have
    # answered its client's close frame, retransmitted to it, with a reset.
    assert not reset_by_closer(read(str(wire))), "reset by the node that had sent the 1001"
    assert source is not None
    lab.check()
