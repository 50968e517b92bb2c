"""Drain at a frame boundary, also when bytes crossed the 101 in either direction."""

from __future__ import annotations

import asyncio
import struct

import pytest

from tests.integration.adversarial.backend import SPLIT_FRAME
from tests.integration.adversarial.client import HANDSHAKE, config
from tests.support.wait import eventually_async

CLOSE_1001 = b"\x88\x02\x03\xe9"


@pytest.mark.single_process
async def test_drain_waits_for_a_frame_that_came_with_the_101(recorder, proxy) -> None:
    """Must hold 7 (backend side): 104 bytes of a 1004-byte frame arrive with the 101; the
    drain's 1001 must come after byte 1004, not at byte 104 + whatever follows."""
    backend = await recorder()
    server = await proxy(config(backend.address))
    reader, writer = await asyncio.open_connection(*server.address("web"))
    writer.write(b"GET /ws/split HTTP/1.1\r\n" + HANDSHAKE)
    async with asyncio.timeout(30):
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101")
        assert await reader.readexactly(104) == SPLIT_FRAME[:104]
        assert server.tunnels.drain_all() == 1
        backend.release.set()
        rest = await reader.readexactly(len(SPLIT_FRAME) - 104 + len(CLOSE_1001))
    writer.close()
    assert rest == SPLIT_FRAME[104:] + CLOSE_1001


@pytest.mark.single_process
async def test_drain_waits_for_a_frame_the_client_sent_with_its_handshake(recorder, proxy) -> None:
    """Must hold 7 (client side): the early bytes are half a masked frame."""
    backend = await recorder()
    server = await proxy(config(backend.address))
    payload = bytes(200)
    frame = b"\x82\xfe" + struct.pack("!H", len(payload)) + b"mask" + payload  # masked: 208 B
    reader, writer = await asyncio.open_connection(*server.address("web"))
    writer.write(b"GET /ws HTTP/1.1\r\n" + HANDSHAKE + frame[:60])
    async with asyncio.timeout(30):
        assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 101")
    await eventually_async(
        lambda: len(backend.tunnels[0].received) == 60, 30, "early bytes relayed"
    )
    server.tunnels.drain_all()
    writer.write(frame[60:])
    await eventually_async(
        lambda: len(backend.tunnels[0].received) >= 208 + 8, 30, "frame and close"
    )
    writer.close()
    received = bytes(backend.tunnels[0].received)
    assert received[:208] == frame
    assert received[208:210] == b"\x88\x82"  # a masked close right after the frame
