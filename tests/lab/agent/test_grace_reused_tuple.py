"""Planned move: a client whose address and port served on the new owner before still gets 1001.

The new owner's grace period drops mid-stream segments of the connections the
old owner still carries, so the old owner's 1001 reaches their clients before
any reset. A connection that reuses the 4-tuple of one the new owner served
earlier (a client behind NAT, an ephemeral port come round again) finds that
node's conntrack entry of the earlier one, which outlives its socket: the
segments must still count as unknown to it and be dropped, not answered with a
reset. (The nodes run a stateful firewall rule, so conntrack tracks their flows.)
An agent writes its node record listing a VIP it took 1.5 s late, so the old owner's 1001
leaves long after the clients' segments reach the new owner.
"""

from __future__ import annotations

import asyncio
import re
import socket
import subprocess
import threading
import time

import pytest
from pyroute2 import Conntrack
from pyroute2.netlink.nfnetlink.nfctsocket import NFCTAttrTuple

from haproxy_py.cluster.intents import new_request_id
from haproxy_py.cluster.records import Request
from haproxy_py.cluster.requestflow import submit, wait_result
from haproxy_py.lab.netns import in_netns, thread_in_netns
from tests.lab.agent.cluster import Lab, Node, wait_or_show
from tests.lab.agent.sameport import follow, touch

pytestmark = pytest.mark.lab
PORT = 8080
SOURCE_PORT = 40123


async def move(lab: Lab, target: Node) -> None:
    request = Request(id=new_request_id(time.time()), kind="move", vip=lab.vip, target=target.name)
    await submit(lab.store, request)
    answered = await wait_result(lab.store, request.id, 30)
    assert answered.result is not None and answered.result.status == "done", answered
    await wait_or_show(lab, lambda: lab.held_by(target.name), 30, f"the VIP on {target.name}")


def host_firewall(node: Node) -> None:
    """A stateful rule of the node's own firewall, as most hosts have: conntrack tracks its
    flows (nothing of the agent's needs it)."""
    rules = (
        "add table ip hostfw\n"
        "add chain ip hostfw input { type filter hook input priority 10; policy accept; }\n"
        "add rule ip hostfw input ct state established,related accept\n"
    )
    subprocess.run(
        ["ip", "netns", "exec", node.netns, "nft", "-f", "-"], input=rules.encode(), check=True
    )


def held_back(node: Node) -> int:
    """Segments the node's grace period dropped (the agent's fence counts them)."""
    listing = subprocess.run(
        ["ip", "netns", "exec", node.netns, "nft", "list", "chain", "ip", "ha_agent", "grace_in"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    found = re.search(r"counter packets (\d+)", listing)
    assert found, listing
    return int(found.group(1))


def tracked(node: Node, vip: str) -> list[str]:
    """The TCP states of `node`'s conntrack entries for the client's port to `vip`."""

    def dump() -> list[str]:
        with Conntrack() as ct:
            want = NFCTAttrTuple(proto=socket.IPPROTO_TCP, daddr=vip)
            return [
                str(entry)
                for entry in ct.dump_entries(tuple_orig=want)
                if f"sport={SOURCE_PORT}," in str(entry)
            ]

    return in_netns(node.netns, dump)


@pytest.mark.parametrize("lab", [1.5], ids=["record-late"], indirect=True)
async def test_a_reused_four_tuple_gets_1001_not_a_reset(lab: Lab) -> None:
    first, second = lab.roles()
    for node in (first, second):
        host_firewall(node)
    assert in_netns(lab.c.client, lambda: touch(lab.vip, PORT, SOURCE_PORT)) == first.name
    await move(lab, second)
    # the precondition: the node about to take the VIP back remembers the 4-tuple
    assert tracked(first, lab.vip), "no conntrack entry of the earlier connection on the node"
    outcome: list[tuple[str, str]] = []
    connected = threading.Event()
    thread = thread_in_netns(
        lab.c.client,
        lambda: outcome.append(follow(lab.vip, PORT, SOURCE_PORT, 20.0, connected)),
    )
    assert await asyncio.to_thread(connected.wait, 10), "the client did not connect through the VIP"
    await move(lab, first)
    await asyncio.to_thread(thread.join, 25)
    assert outcome == [(second.name, "1001")], f"the moved connection ended {outcome}"
    assert held_back(first) > 0, "no segment reached the new owner before the 1001"
    lab.check()
