"""Client load for a chaos run, on the client namespace's loop: WebSocket echo clients that
number their messages, beside the HTTP probes of `haproxy_py.lab.client.Probe`.

Each WebSocket client sends `<connection>:<seq>` every `period` seconds on one
connection and checks every echo with a `SeqCheck`; when the connection ends it
reconnects at once (with a new connection name and numbering). Every loop
stops by its deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field

import aiohttp

from haproxy_py.lab.chaos.verdict import SeqCheck

RETRY = 0.05  # pause after a failed connect


@dataclass
class WsStats:
    connections: int = 0
    connect_failures: int = 0
    echoes: int = 0
    problems: list[tuple[float, str]] = field(default_factory=list)
    # client -> (when it last got an echo or began a connection attempt, what it is doing)
    progress: dict[int, tuple[float, str]] = field(default_factory=dict)
    current: dict[int, tuple[SeqCheck, str]] = field(default_factory=dict)  # connection, via

    def behind(self, since: float) -> list[tuple[str, float, str]]:
        """(connection, last progress, what it does) of the clients that have had no echo and
        begun no new attempt since `since`."""
        now = time.monotonic()
        found = []
        for i, (at, doing) in sorted(self.progress.items()):
            if at < since:
                check, via = self.current.get(i, (SeqCheck(f"ws{i}.-"), "?"))
                found.append(
                    (
                        check.connection,
                        at,
                        f"ws client {i} {doing} for {now - at:.1f} s "
                        f"(last connection {check.connection} via {via}: "
                        f"{check.sent} sent, {check.echoes} echoed)",
                    )
                )
        return found


async def _converse(
    ws: aiohttp.ClientWebSocketResponse,
    check: SeqCheck,
    period: float,
    stats: WsStats,
    index: int,
) -> None:
    async def sender() -> None:
        seq = 0
        while not ws.closed:
            await ws.send_str(f"{check.connection}:{seq}")
            seq += 1
            check.sent = seq
            await asyncio.sleep(period)

    task = asyncio.create_task(sender())
    try:
        async for msg in ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                continue
            name, _, seq = msg.data.rpartition(":")
            stats.echoes += 1
            stats.progress[index] = (time.monotonic(), f"got no echo on {check.connection}")
            check.echoes += 1
            problem = (
                f"{check.connection}: echo of another connection {msg.data!r}"
                if name != check.connection
                else check.echo(int(seq))
            )
            if problem is not None:
                stats.problems.append((time.monotonic(), problem))
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, ConnectionError):
            await task


async def ws_client(
    session: aiohttp.ClientSession,
    url: str,
    index: int,
    period: float,
    deadline: float,
    stop: asyncio.Event,
    stats: WsStats,
) -> None:
    n = 0
    while time.monotonic() < deadline and not stop.is_set():
        stats.progress[index] = (time.monotonic(), "is connecting")
        try:
            ws = await session.ws_connect(url, autoping=True, heartbeat=None)
        except (aiohttp.ClientError, OSError, TimeoutError):
            stats.connect_failures += 1
            await asyncio.sleep(RETRY)
            continue
        n += 1
        stats.connections += 1
        via = ws._response.headers.get("Via", "?").split()[-1]  # the node that took the 101
        check = SeqCheck(f"ws{index}.{n}")
        stats.progress[index] = (time.monotonic(), f"got no echo on {check.connection}")
        stats.current[index] = (check, via)
        with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError):
            async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                conversation = asyncio.create_task(_converse(ws, check, period, stats, index))
                stopped = asyncio.create_task(stop.wait())
                await asyncio.wait({conversation, stopped}, return_when=asyncio.FIRST_COMPLETED)
                stopped.cancel()
                conversation.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await conversation
        await ws.close()


async def ws_load(
    urls: list[str],
    clients: int,
    period: float,
    seconds: float,
    stop: asyncio.Event,
    stats: WsStats,
) -> None:
    """`clients` WebSocket clients spread over `urls`, until `stop` or `seconds` have passed;
    `stats` fills as they go, so a run can judge it while the load goes on."""
    deadline = time.monotonic() + seconds
    limits = aiohttp.ClientTimeout(total=None, connect=2.0, sock_connect=2.0)
    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    async with aiohttp.ClientSession(timeout=limits, connector=connector) as session:
        tasks = [
            asyncio.create_task(
                ws_client(session, urls[i % len(urls)], i, period, deadline, stop, stats)
            )
            for i in range(clients)
        ]
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), max(0.0, deadline - time.monotonic()))
        for task in tasks:  # a client may wait on a connect, a handshake or a close
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
