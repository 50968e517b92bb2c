"""A WebSocket through the VIP during a planned failover: close 1001, then a reconnect that lands
on the new node."""

from __future__ import annotations

from collections.abc import Iterator

import aiohttp
import pytest

from haproxy_py.lab import control
from haproxy_py.lab.client import NetnsLoop, whoami
from haproxy_py.lab.layout import PROXY_PORT

from .support import lab_session, settle

pytestmark = [pytest.mark.lab, pytest.mark.timeout(300)]


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[control.Lab]:
    with lab_session(tmp_path_factory.mktemp("ws"), "active-standby", "ws") as built:
        yield built


async def _echo(ws: aiohttp.ClientWebSocketResponse, text: str) -> str:
    await ws.send_str(text)
    msg = await ws.receive(timeout=10)
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
