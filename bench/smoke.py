"""A quick HTTP GET and WebSocket echo through a target before it is measured.

A proxy that starts but does not relay correctly must show up as a failed
target with its reason, not as odd numbers.
"""

from __future__ import annotations

import asyncio

import aiohttp

from bench.targets import TargetFailed

HELLO = "Hello, World!"


async def _check(address: str) -> None:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as session:
        async with session.get(f"http://{address}/") as resp:
            body = await resp.text()
            if resp.status != 200 or body != HELLO:
                raise TargetFailed(
                    f"GET / through {address}: HTTP {resp.status}, body {body[:60]!r}"
                )
        async with session.ws_connect(f"ws://{address}/ws", autoping=False) as ws:
            for message in ("ping", b"\x5a" * 70_000):
                await (ws.send_str(message) if isinstance(message, str) else ws.send_bytes(message))
                echo = await ws.receive()
                if echo.data != message:
                    raise TargetFailed(
                        f"WebSocket through {address}: echo differs ({echo.type.name})"
                    )


def smoke(address: str) -> None:
    """Raise TargetFailed unless HTTP and WebSocket both work through `address`."""
    try:
        asyncio.run(_check(address))
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        raise TargetFailed(f"smoke test through {address} failed: {exc!r}") from exc
