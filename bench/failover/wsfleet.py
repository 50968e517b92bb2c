"""A fleet of WebSocket clients through the VIP that reconnect on their own, as browsers do.

Each client keeps one connection to the demo app's /echo open, pings every
`heartbeat` seconds (so a connection to a dead or cut-off node is noticed:
no pong within half that time closes it) and reconnects after a short pause
whenever its connection ends. Every client records when it went down and up,
so that `stats.all_back` can tell how long the whole fleet took to return.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass, field

import aiohttp

RETRY = 0.05  # pause before a reconnect (plus up to the same again of jitter)
CONNECTS = 64  # handshakes in flight at once while the fleet first connects


@dataclass
class Client:
    events: list[tuple[float, bool]] = field(default_factory=list)  # (monotonic, connected)

    @property
    def connected(self) -> bool:
        return bool(self.events) and self.events[-1][1]

    def after(self, fault: float) -> tuple[float | None, float | None]:
        """First disconnect at or after `fault`, and the first reconnect after that."""
        down = next((t for t, up in self.events if t >= fault and not up), None)
        if down is None:
            return None, None
        back = next((t for t, up in self.events if t >= down and up), None)
        return down, back


class Fleet:
    """`count` reconnecting WebSocket clients of `url` (run on the client namespace's loop)."""

    def __init__(self, url: str, count: int, heartbeat: float = 1.0) -> None:
        self.url = url
        self.heartbeat = heartbeat
        self.clients = [Client() for _ in range(count)]
        self._tasks: list[asyncio.Task[None]] = []
        self._session: aiohttp.ClientSession | None = None
        self._gate: asyncio.Semaphore | None = None

    def all_connected(self) -> bool:
        return all(c.connected for c in self.clients)

    def returned(self, fault: float) -> bool:
        """Has every client lost its connection since `fault` and been connected again?
        (A VIP that moves ends every connection: its node no longer has the address.)"""
        return all(c.after(fault)[1] is not None for c in self.clients)

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(limit=0, force_close=True)
        # A connect to a VIP nobody holds yet must fail soon and be retried, as a browser would.
        limits = aiohttp.ClientTimeout(total=None, connect=1.0, sock_connect=1.0, sock_read=None)
        self._session = aiohttp.ClientSession(connector=connector, timeout=limits)
        self._gate = asyncio.Semaphore(CONNECTS)
        self._tasks = [asyncio.create_task(self._run(c)) for c in self.clients]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()

    async def _run(self, client: Client) -> None:
        assert self._session is not None and self._gate is not None
        timeout = aiohttp.ClientWSTimeout(ws_close=1.0)
        while True:
            try:
                async with self._gate:
                    ws = await self._session.ws_connect(
                        self.url,
                        heartbeat=self.heartbeat,
                        timeout=timeout,
                        autoping=True,
                    )
                client.events.append((time.monotonic(), True))
                async with ws:
                    async for _ in ws:
                        pass
                client.events.append((time.monotonic(), False))
            except (aiohttp.ClientError, OSError, TimeoutError):
                if client.connected:
                    client.events.append((time.monotonic(), False))
            await asyncio.sleep(RETRY * (1 + random.random()))
