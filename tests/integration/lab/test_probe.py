"""The lab's probe keeps its cadence while the VIP black-holes its connections.

Failover figures are read from the probe's attempts: if it paused while many attempts
hung, the first answer after a move would be the first attempt after the pause, not the
move itself.
"""

from __future__ import annotations

import asyncio
import itertools

from haproxy_py.lab.client import Probe


def test_the_probe_never_pauses_while_every_attempt_hangs() -> None:
    async def run() -> list[float]:
        async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.read()  # accepts and never answers: every attempt times out
            writer.close()

        server = await asyncio.start_server(silent, "127.0.0.1", 0, backlog=512)
        port = server.sockets[0].getsockname()[1]
        probe = Probe("127.0.0.1", port, interval=0.01, timeout=2.0, limit=3.0)
        async with server:
            attempts = await probe.run()
        return sorted(a.start for a in attempts)

    starts = asyncio.run(run())
    assert starts[-1] - starts[0] > 2.5
    # a cap of 100 hanging attempts at 10 ms would pause the probe for about 1 s
    assert max(b - a for a, b in itertools.pairwise(starts)) < 0.5
