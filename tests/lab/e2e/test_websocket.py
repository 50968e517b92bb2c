"""A WebSocket through the VIP during a planned failover: close 1001, then a reconnect that lands
on the new node; and one that stays, and flows, when the VIP comes back to its own node."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import aiohttp
import pytest

from agent.handover import GRACE
from haproxy_py.cluster.store import Store
from haproxy_py.lab import control
from haproxy_py.lab.client import NetnsLoop, whoami
from haproxy_py.lab.layout import CLUSTER, PROXY_PORT
from tests.support.wait import eventually

from .support import hactl_json, lab_session, settle, view

pytestmark = [pytest.mark.lab, pytest.mark.timeout(300)]


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[control.Lab]:
    with lab_session(tmp_path_factory.mktemp("ws"), "active-standby", "ws") as built:
        yield built


async def _echo(ws: aiohttp.ClientWebSocketResponse, text: str, within: float = 10) -> str:
    """What came back for `text` within `within` s ("" if nothing did)."""
    await ws.send_str(text)
    try:
        msg = await ws.receive(timeout=within)
    except TimeoutError:
        return ""
    assert msg.type == aiohttp.WSMsgType.TEXT, msg
    return str(msg.data)


def test_planned_failover_closes_with_1001_and_reconnect_lands_on_new_node(
    lab: control.Lab,
) -> None:
    before = settle(lab)
    vip = lab.layout.vips[0]
    old = before.owner(vip)
    url = f"http://{vip}:{PROXY_PORT}/echo"
    with NetnsLoop(lab.layout.client.netns) as loop:
        session = loop.run(_session())
        try:
            ws = loop.run(session.ws_connect(url))
            assert loop.run(_echo(ws, "before")) == "before"
            assert loop.run(whoami(vip, PROXY_PORT, 5)) == old

            moved = lab.hactl("failover", "-y")
            assert moved.returncode == 0, moved.stdout + moved.stderr

            try:
                closing = loop.run(ws.receive(timeout=15))
            except TimeoutError:
                pytest.fail(f"{old} did not close the WebSocket within 15 s of the planned move")
            # The close frame is what the client received. `ws.close_code` may read 1006 even
            # then: the client's reply goes to the VIP, now on the new node, which answers RST.
            received = f"{closing.type.name} {closing.data!r} (close_code {ws.close_code})"
            assert closing.type == aiohttp.WSMsgType.CLOSE, f"no close frame: {received}"
            assert closing.data == 1001, f"closed with {received}, expected 1001"

            again = loop.run(session.ws_connect(url))
            assert loop.run(_echo(again, "after")) == "after"
            now = loop.run(whoami(vip, PROXY_PORT, 5))
            assert now is not None and now != old
            loop.run(again.close())
        finally:
            loop.run(session.close())


async def _session() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20))


def test_a_websocket_flows_on_when_the_vip_comes_back_to_its_own_node(lab: control.Lab) -> None:
    """The owner's lease revoked (as the controllers do to an owner that fails its probes)
    while no other node can take the VIP: it comes back to the same node, `returned`, whose
    clients are its own. No grace period may drop their segments: a grace period (5 s of
    dropped segments, then the client's retransmission backoff) would hold the echo for
    about 6 s."""
    before = settle(lab)
    vip = lab.layout.vips[0]
    owner = before.owner(vip)
    other = next(n.name for n in lab.layout.nodes if n.name != owner)
    assert owner is not None
    url = f"http://{vip}:{PROXY_PORT}/echo"
    lab.kill(other, "agent")
    try:
        eventually(lambda: (v := view(lab)) is not None and other not in v.nodes, 30, "lease gone")
        # A connection opened during a grace period is let through it (the first test's move
        # left one running on this node): open the WebSocket after it.
        eventually(lambda: not _grace_running(lab, owner), 30, f"no grace period on {owner}")
        with NetnsLoop(lab.layout.client.netns) as loop:
            session = loop.run(_session())
            try:
                ws = loop.run(session.ws_connect(url))
                assert loop.run(_echo(ws, "before")) == "before"
                lease = before.vips[vip].lease
                loop.run(_revoke(lab, lease))
                eventually(
                    lambda: (
                        (v := view(lab)) is not None
                        and (a := v.vips.get(vip)) is not None
                        and a.node == owner
                        and a.lease != lease
                    ),
                    30,
                    f"{vip} given back to {owner} under its new lease",
                )
                assert hactl_json(lab, "history")[-1]["cause"] == "returned"
                eventually(lambda: loop.run(whoami(vip, PROXY_PORT, 2)) == owner, 30, "served")
                sent = loop.run(_echo(ws, "after", GRACE - 1.0))
                assert sent == "after", f"no echo within {GRACE - 1.0:g} s of the VIP's return"
                assert not ws.closed
                loop.run(ws.close())
            finally:
                loop.run(session.close())
    finally:
        lab.start_node(other, ("agent",))
    settle(lab)


def _grace_running(lab: control.Lab, node: str) -> bool:
    """Whether `node`'s packet fence drops unknown mid-stream segments to a VIP now."""
    argv = ["ip", "netns", "exec", lab.layout.node(node).netns]
    argv += ["nft", "list", "set", "ip", "ha_agent", "grace"]
    return "elements" in subprocess.run(argv, capture_output=True, text=True, check=True).stdout


async def _revoke(lab: control.Lab, lease: int) -> None:
    async with Store(lab.etcd_config(), CLUSTER) as store:
        await store.revoke(lease)
