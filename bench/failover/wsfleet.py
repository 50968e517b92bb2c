"""A fleet of WebSocket clients through the VIP that reconnect on their own, as browsers do.

Each client keeps one connection to the demo app's /echo open, pings every
`heartbeat` seconds (so a connection to a dead or cut-off node is noticed:
no pong within half that time closes it) and reconnects after a short pause
whenever its connection ends. Every client records when it connected, through
which node (the `Via` header of the handshake's 101), and when it went down, so
that a trial can tell when the whole fleet is served by the nodes that serve the
VIP after a fault, and how many clients had to reconnect for that.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Collection
from dataclasses import dataclass, field

import aiohttp

from bench.failover.stats import Back

RETRY = 0.05  # pause before a reconnect (plus up to the same again of jitter)
CONNECTS = 64  # handshakes in flight at once while the fleet first connects


@dataclass
class Client:
    # (monotonic, node) per change: the node a new connection went through, None when it ended
    events: list[tuple[float, str | None]] = field(default_factory=list)

    @property
    def node(self) -> str | None:
        """The node of the current connection; None while disconnected."""
        return self.events[-1][1] if self.events else None

    def back(self, fault: float, serving: Collection[str]) -> Back | None:
        """Connected now through one of `serving`: since when, and whether that connection was
        made after `fault` (a reconnect) or survived it; None if not (yet) so."""
        if not self.events:
            return None
        since, node = self.events[-1]
        if node is None or node not in serving:
            return None
        return Back(since, since >= fault)


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
        return all(c.node is not None for c in self.clients)

    def back(self, fault: float, serving: Collection[str]) -> list[Back] | None:
        """Every client's `Client.back`, or None while any client is not back yet."""
        backs = []
        for client in self.clients:
            back = client.back(fault, serving)
            if back is None:
                return None
            backs.append(back)
        return backs

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
                client.events.append((time.monotonic(), _via(ws)))
                async with ws:
                    async for _ in ws:
                        pass
                client.events.append((time.monotonic(), None))
            except (aiohttp.ClientError, OSError, TimeoutError):
                if client.node is not None:
                    client.events.append((time.monotonic(), None))
            await asyncio.sleep(RETRY * (1 + random.random()))


def _via(ws: aiohttp.ClientWebSocketResponse) -> str:
    """The proxy node named in the handshake's `Via` ("1.1 node1"); aiohttp keeps the 101
    response only on a private attribute, and "?" stands for a proxy that sent none."""
    via: str = ws._response.headers.get("Via", "")
    return via.split()[-1] if via else "?"
