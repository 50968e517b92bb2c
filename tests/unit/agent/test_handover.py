"""A proxy back after it was down is told about the VIPs its node does not hold
(`agent.handover.Handover.proxy_back`).

Connections that reached a VIP while its proxy was stopping wait in the
listening queue of haproxy-py.socket for the next proxy, which answers them
from an address the node may have released meanwhile: it must be told to let
them go, with the fence let out first.
"""

from __future__ import annotations

from agent.handover import Handover
from haproxy_py.cluster.memstore import MemoryStore
from haproxy_py.cluster.records import NodeRecord

RELEASED, HELD = "198.18.77.100", "198.18.77.101"


class Proxy:
    def __init__(self, events: list[str]) -> None:
        self.events = events

    async def drain_address(self, address: str) -> str:
        self.events.append(f"drain {address}")
        return "/drain answered 202 (3 WebSockets)"

    async def hold_address(self, address: str) -> str:
        self.events.append(f"hold {address}")
        return "/hold answered 200 (3 WebSockets, 0 with bytes unacknowledged)"

    async def unhold_address(self, address: str) -> str:
        self.events.append(f"unhold {address}")
        return "/unhold answered 200"


async def test_a_proxy_back_is_told_about_the_vips_not_held_here() -> None:
    events: list[str] = []
    store = MemoryStore("w")
    record = NodeRecord("n2", healthy=True, vips=(RELEASED,))
    await store.put(store.schema.node("n2"), record.to_json())
    told = Handover(
        store,
        Proxy(events),
        "n1",
        lambda vip: vip == HELD,
        1.0,
        lambda vip: events.append(f"let out {vip}"),
    )
    told.proxy_back([RELEASED, HELD])
    await told.finish(10)
    assert events == [f"let out {RELEASED}", f"drain {RELEASED}"]


async def test_a_released_vip_that_came_back_is_served_at_once_not_drained() -> None:
    """Its hold would otherwise keep its clients waiting until it ended by itself (10 s)."""
    events: list[str] = []
    store = MemoryStore("w")
    await store.put(store.schema.node("n1"), NodeRecord("n1", True, vips=(HELD,)).to_json())
    told = Handover(
        store, Proxy(events), "n1", lambda vip: True, 1.0, lambda vip: events.append("let out")
    )
    told.released([HELD])
    await told.finish(10)
    assert events == [f"unhold {HELD}"]
