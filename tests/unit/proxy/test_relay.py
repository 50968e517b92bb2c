"""The tunnel over real socket pairs: close codes for the log, the drain's 1001 at frame ends."""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
from websockets.frames import Close, Frame, Opcode

from haproxy_py.proxy.balancer import Server
from haproxy_py.proxy.config import ServerConfig
from haproxy_py.proxy.relay import Tunnel, Tunnels
from tests.support.wait import eventually_async


@dataclass
class Ends:
    tunnel: Tunnel
    tunnels: Tunnels
    ended: list[Tunnel]
    client: tuple[asyncio.StreamReader, asyncio.StreamWriter]  # the WebSocket client
    backend: tuple[asyncio.StreamReader, asyncio.StreamWriter]  # the WebSocket server


@pytest.fixture
async def ends() -> AsyncIterator[Ends]:
    loop = asyncio.get_running_loop()
    client_end, proxy_front = socket.socketpair()
    proxy_back, backend_end = socket.socketpair()
    front, _ = await loop.connect_accepted_socket(asyncio.Protocol, proxy_front)
    back, _ = await loop.connect_accepted_socket(asyncio.Protocol, proxy_back)
    ended: list[Tunnel] = []
    tunnels = Tunnels(ended.append)
    server = Server(ServerConfig("127.0.0.1", 1))
    tunnel = tunnels.add(
        front, back, backend="app", server=server, client_ip="198.18.0.1", listener=None
    )
    client = await asyncio.open_connection(sock=client_end)
    backend = await asyncio.open_connection(sock=backend_end)
    yield Ends(tunnel, tunnels, ended, client, backend)
    tunnels.abort_all()
    for _, writer in (client, backend):
        writer.close()


def frame(opcode: Opcode, data: bytes, *, masked: bool, fin: bool = True) -> bytes:
    return Frame(opcode, data, fin=fin).serialize(mask=masked)


def close(code: int, *, masked: bool) -> bytes:
    return frame(Opcode.CLOSE, Close(code, "").serialize(), masked=masked)


GOING_AWAY_TO_CLIENT = b"\x88\x02" + struct.pack("!H", 1001)


async def read_exactly(stream: tuple[asyncio.StreamReader, asyncio.StreamWriter], n: int) -> bytes:
    return await asyncio.wait_for(stream[0].readexactly(n), 30)


async def read_to_eof(stream: tuple[asyncio.StreamReader, asyncio.StreamWriter]) -> bytes:
    return await asyncio.wait_for(stream[0].read(-1), 30)


def unmask_close_code(data: bytes) -> int:
    assert data[0] == 0x88 and data[1] & 0x80, data
    key = data[2:6]
    return (data[6] ^ key[0]) << 8 | (data[7] ^ key[1])


async def test_bytes_relayed_and_first_close_code_logged(ends: Ends) -> None:
    hello = frame(Opcode.TEXT, b"hello", masked=True)
    ends.client[1].write(hello)
    assert await read_exactly(ends.backend, len(hello)) == hello
    ends.client[1].write(close(4001, masked=True))
    await read_exactly(ends.backend, 8)
    ends.backend[1].write(close(4001, masked=False))
    await read_exactly(ends.client, 4)
    assert (ends.tunnel.close_code, ends.tunnel.closed_by) == (4001, "client")
    ends.backend[1].close()
    assert await read_to_eof(ends.client) == b""
    await eventually_async(lambda: ends.ended == [ends.tunnel], 30, "the tunnel ended")


async def test_drain_closes_an_idle_session_both_ways(ends: Ends) -> None:
    assert ends.tunnels.drain_all() == 1
    assert await read_exactly(ends.client, 4) == GOING_AWAY_TO_CLIENT
    to_backend = await read_exactly(ends.backend, 8)
    assert unmask_close_code(to_backend) == 1001
    # Each end answers; the answers are not relayed (each already got its close), then
    # the proxy closes both sockets.
    ends.client[1].write(close(1001, masked=True))
    ends.backend[1].write(close(1001, masked=False))
    assert await read_to_eof(ends.client) == b""
    assert await read_to_eof(ends.backend) == b""
    await eventually_async(lambda: ends.ended == [ends.tunnel], 30, "the tunnel ended")
    assert (ends.tunnel.close_code, ends.tunnel.closed_by) == (1001, "proxy")


async def test_drain_waits_for_the_frame_in_flight(ends: Ends) -> None:
    big = frame(Opcode.BINARY, b"x" * 70_000, masked=False, fin=False)
    ends.backend[1].write(big[:30_000])
    assert await read_exactly(ends.client, 30_000) == big[:30_000]
    ends.tunnels.drain_all()
    # The client direction is mid-frame: nothing may be inserted yet; the backend
    # direction is at a boundary and gets its close at once.
    assert unmask_close_code(await read_exactly(ends.backend, 8)) == 1001
    after = frame(Opcode.CONT, b"late", masked=False)
    ends.backend[1].write(big[30_000:] + after)
    rest = await read_exactly(ends.client, len(big) - 30_000 + 4)
    assert rest == big[30_000:] + GOING_AWAY_TO_CLIENT  # `after` was dropped
    ends.client[1].write(close(1001, masked=True))
    ends.backend[1].write(close(1000, masked=False))
    assert await read_to_eof(ends.client) == b""


async def test_drain_sends_no_second_close_after_the_clients(ends: Ends) -> None:
    client_close = close(1000, masked=True)
    ends.client[1].write(client_close)
    assert await read_exactly(ends.backend, len(client_close)) == client_close
    ends.tunnels.drain_all()
    # The client already closed: the backend gets no close from the proxy; the client
    # gets 1001 as the answer to its close, and the backend's own answer is dropped.
    assert await read_exactly(ends.client, 4) == GOING_AWAY_TO_CLIENT
    ends.backend[1].write(close(1000, masked=False))
    assert await read_to_eof(ends.backend) == b""
    assert await read_to_eof(ends.client) == b""


async def test_close_frame_split_across_reads_during_drain(ends: Ends) -> None:
    partial = frame(Opcode.TEXT, b"abc", masked=True)
    ends.client[1].write(partial[:1])
    await read_exactly(ends.backend, 1)  # relayed at once, the header stays incomplete
    ends.tunnels.drain_all()
    assert await read_exactly(ends.client, 4) == GOING_AWAY_TO_CLIENT
    ends.client[1].write(partial[1:])
    got = await read_exactly(ends.backend, len(partial) - 1 + 8)
    assert got[: len(partial) - 1] == partial[1:]
    assert unmask_close_code(got[len(partial) - 1 :]) == 1001


async def test_small_frames_one_per_read_then_a_split_one(ends: Ends) -> None:
    """Whole small frames skip the tracker; a small frame cut by a read must not."""
    for i in range(3):
        whole = frame(Opcode.TEXT, b"m%d" % i, masked=False)
        ends.backend[1].write(whole)
        assert await read_exactly(ends.client, len(whole)) == whole
    split = frame(Opcode.TEXT, b"s" * 20, masked=False)
    ends.backend[1].write(split[:5])
    assert await read_exactly(ends.client, 5) == split[:5]
    ends.tunnels.drain_all()
    assert unmask_close_code(await read_exactly(ends.backend, 8)) == 1001
    ends.backend[1].write(split[5:])
    rest = await read_exactly(ends.client, len(split) - 5 + 4)
    assert rest == split[5:] + GOING_AWAY_TO_CLIENT


async def test_small_close_frame_in_one_read_is_seen(ends: Ends) -> None:
    ends.backend[1].write(close(4002, masked=False))
    assert await read_exactly(ends.client, 4) == close(4002, masked=False)
    assert (ends.tunnel.close_code, ends.tunnel.closed_by) == (4002, "backend")


async def test_idle_sweep_uses_each_tunnels_own_timeout_and_aborts_once(ends: Ends) -> None:
    """A tunnel idle for its timeout is closed once; if the close has not finished
    `abort_after` later it is aborted, and it is never counted twice."""
    tunnels, tunnel = ends.tunnels, ends.tunnel
    tunnel.idle_timeout = 10.0
    assert tunnels.sweep_idle(100.0, abort_after=5.0) == 0  # first sight: the mark is set
    assert tunnels.sweep_idle(109.0, abort_after=5.0) == 0  # idle 9 s of 10
    ends.client[1].write(b"\x81\x00")  # one byte each way resets the idle time
    await read_exactly(ends.backend, 2)
    assert tunnels.sweep_idle(111.0, abort_after=5.0) == 0
    assert tunnels.sweep_idle(121.0, abort_after=5.0) == 1
    assert tunnel.closing_since == 121.0
    assert tunnels.sweep_idle(122.0, abort_after=5.0) == 0  # closing: not counted again
    assert tunnels.sweep_idle(126.0, abort_after=5.0) == 0  # aborted now, if still open
    for _ in range(100):
        if ends.ended:
            break
        await asyncio.sleep(0.01)
    assert ends.ended == [tunnel]
