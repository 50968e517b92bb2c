"""The chat page in headless Chromium, through the VIP, across a failover of the active node.

Chromium runs in the client namespace and is driven over the DevTools protocol
(a WebSocket) from a loop in the same namespace.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from haproxy_py.lab import control
from haproxy_py.lab.client import NetnsLoop
from haproxy_py.lab.layout import PROXY_PORT
from tests.support.wait import eventually

from .support import ARTIFACTS, lab_session, settle

pytestmark = [pytest.mark.lab, pytest.mark.timeout(300)]

CHROMIUM = "/usr/bin/chromium"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--window-size=1000,700",
    "--remote-debugging-address=127.0.0.1",
    "--remote-debugging-port=0",
]


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[control.Lab]:
    with lab_session(tmp_path_factory.mktemp("browser"), "active-standby", "browser") as built:
        yield built


class DevTools:
    """Just enough of the Chrome DevTools protocol: send a command, wait for its answer."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.next_id = 0

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        self.next_id += 1
        ident = self.next_id
        await self.ws.send_json({"id": ident, "method": method, "params": params})
        while True:
            msg = await self.ws.receive(timeout=30)
            if msg.type != aiohttp.WSMsgType.TEXT:
                raise AssertionError(f"DevTools connection ended: {msg}")
            doc = json.loads(msg.data)
            if doc.get("id") == ident:
                if "error" in doc:
                    raise AssertionError(f"{method}: {doc['error']}")
                result: dict[str, Any] = doc["result"]
                return result

    async def evaluate(self, expression: str) -> Any:
        result = await self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        return result["result"].get("value")


async def _attach(port: int) -> tuple[aiohttp.ClientSession, DevTools]:
    session = aiohttp.ClientSession()
    async with session.get(f"http://127.0.0.1:{port}/json/list") as response:
        targets = await response.json()
    page = next(t for t in targets if t["type"] == "page")
    ws = await session.ws_connect(page["webSocketDebuggerUrl"], max_msg_size=0)
    return session, DevTools(ws)


@pytest.fixture
def chromium(lab: control.Lab, tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """Chromium in the client namespace showing the chat page through the VIP."""
    profile = tmp_path / "profile"
    url = f"http://{lab.layout.vips[0]}:{PROXY_PORT}/"
    argv = ["ip", "netns", "exec", lab.layout.client.netns, CHROMIUM, *FLAGS]
    argv += [f"--user-data-dir={profile}", url]
    with (tmp_path / "chromium.log").open("wb") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=log, start_new_session=True)
    try:
        port_file = profile / "DevToolsActivePort"
        eventually(port_file.exists, 60, "Chromium's DevTools port")
        eventually(lambda: port_file.read_text().strip() != "", 10, "the DevTools port number")
        yield int(port_file.read_text().split()[0]), tmp_path
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


def test_chat_page_reconnects_after_failover(lab: control.Lab, chromium: tuple[int, Path]) -> None:
    before = settle(lab)
    old = before.owner(lab.layout.vips[0])
    assert old is not None
    port, _ = chromium
    with NetnsLoop(lab.layout.client.netns) as loop:
        session, tools = loop.run(_attach(port))
        try:
            chat = _chat_state(loop, tools)
            eventually(
                lambda: (
                    (s := chat()) is not None and s["state"] == "connected" and s["node"] == old
                ),
                60,
                f"the page to connect through {old}",
            )
            _say(loop, tools, "hello before")
            eventually(lambda: "hello before" in chat()["messages"], 30, "the first message")

            lab.kill(old)
            try:
                eventually(
                    lambda: (
                        (s := chat())["node"] not in (None, "?", old) and s["state"] == "connected"
                    ),
                    60,
                    "the page to reconnect through another node",
                )
                state = chat()
                assert state["connects"] >= 2
                _say(loop, tools, "hello after")
                eventually(lambda: "hello after" in chat()["messages"], 30, "the second message")
                shot = loop.run(tools.call("Page.captureScreenshot", format="png"))
                ARTIFACTS.mkdir(parents=True, exist_ok=True)
                (ARTIFACTS / "chat-after-failover.png").write_bytes(base64.b64decode(shot["data"]))
            finally:
                lab.restart(old)
        finally:
            loop.run(session.close())


def _chat_state(loop: NetnsLoop, tools: DevTools) -> Any:
    def read() -> Any:
        raw = loop.run(tools.evaluate("JSON.stringify(window.chat || null)"))
        return json.loads(raw) if raw else None

    return read


def _say(loop: NetnsLoop, tools: DevTools, text: str) -> None:
    script = (
        f"document.getElementById('text').value = {json.dumps(text)};"
        "document.getElementById('form').requestSubmit(); true"
    )
    assert loop.run(tools.evaluate(script)) is True
