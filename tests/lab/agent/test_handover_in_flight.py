"""The agent's clean stop: a client with a segment in flight when the move starts still gets
its 1001 (WebSocket) or a clean close (HTTP keep-alive), however late the old node's proxy
writes it.

Whatever the old node sent right before its fence falls is never acknowledged:
the client's ACKs go to the new owner, which drops them (its grace). Once the
old node retransmits that segment, TCP allows one segment in flight, the
retransmission's, so a 1001 (or FIN) written after it never leaves and the
client is reset when the grace ends. Here that case is made deterministic: the
client's pure ACKs on its connection are dropped in its own namespace for 0.3 s
around the stop (a slow or lossy client), its one frame's echo (or its one
response on a keep-alive connection) is unacknowledged when the agent gets
SIGTERM, and every agent holds back its drain 2 s after the fence lets the
1001s out (a starved proxy writing them late). Before the fence falls the proxy
must hold the VIP's clients until they acknowledged all, and start no new
exchange on the keep-alive connection.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import time

import pytest

from tests.lab.agent.cluster import Lab, restart, wait_or_show

pytestmark = pytest.mark.lab
ACKS_LOST = 0.3  # seconds the client's pure ACKs are dropped, the stop at their start
TABLE = "ackless"


def events(path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def nft(netns: str, commands: str, check: bool = True) -> None:
    subprocess.run(
        ["ip", "netns", "exec", netns, "nft", commands], check=check, capture_output=True
    )


@pytest.mark.parametrize(
    ("module", "answer", "end"),
    [("oneframe", "echo", {"code": 1001}), ("onerequest", "response", {})],
    ids=["websocket", "http-keep-alive"],
)
@pytest.mark.parametrize("lab", [(0.0, "new", 2.0)], ids=["drain-2s-late"], indirect=True)
async def test_a_client_with_a_segment_in_flight_at_the_stop_is_closed_cleanly(
    lab: Lab, module: str, answer: str, end: dict[str, object]
) -> None:
    out = lab.c.root / f"{module}.out"
    client = lab.c.start_client(module, lab.vip, "8080", "60", str(out))
    active, _ = lab.roles()
    try:
        await wait_or_show(lab, lambda: bool(events(out)), 30, "the client connected")
        port = events(out)[0]["port"]
        nft(lab.c.client, f"add table ip {TABLE}")
        nft(
            lab.c.client,
            f"add chain ip {TABLE} out {{ type filter hook output priority 0; }}; "
            f"add rule ip {TABLE} out ip daddr {lab.vip} tcp sport {port} "
            "tcp flags & (syn | fin | rst | psh) == 0 drop",
        )
        lab.c.lab.kill(client, signal.SIGUSR1)
        await wait_or_show(lab, lambda: len(events(out)) > 1, 10, f"the {answer}")
        assert events(out)[1]["event"] == answer, events(out)
        stopping = asyncio.create_task(restart(lab, active, "agent", signal.SIGTERM))
        started = time.monotonic()
        await asyncio.sleep(ACKS_LOST)
        nft(lab.c.client, f"delete table ip {TABLE}")
        await stopping
        await wait_or_show(lab, lambda: len(events(out)) > 2, 30, "the connection's end")
    finally:
        nft(lab.c.client, f"delete table ip {TABLE}", check=False)  # (gone already, normally)
        lab.c.lab.kill(client)
    last = events(out)[2]
    assert last["event"] == "closed" and end.items() <= last.items(), (last, started)
    lab.check()
