"""`haproxy-py run` as a real process: serves, logs JSON, stops cleanly on SIGTERM."""

from __future__ import annotations

import asyncio
import signal
import socket
from pathlib import Path

import pytest

from tests.integration.proxy.process import CONFIG, read_event, running, start
from tests.integration.proxy.support import Backend


@pytest.mark.asyncio(loop_factories=["asyncio"])
async def test_run_serves_and_stops_on_sigterm(tmp_path: Path) -> None:
    backend = Backend("cli")
    await backend.start()
    try:
        async with running(tmp_path / "node.toml", backend.address) as (process, started):
            assert started["loop"] == "uvloop"
            host, port = str(started["listeners"]["web"]).rsplit(":", 1)
            reader, writer = await asyncio.open_connection(host, int(port))
            writer.write(b"GET /cli HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            async with asyncio.timeout(30):
                answer = await reader.read(-1)
            writer.close()
            assert answer.startswith(b"HTTP/1.1 200 OK")
            assert b"Via: 1.1 cli-node" in answer
            access = await read_event(process, "http")
            assert access["path"] == "/cli" and access["status"] == 200
            process.send_signal(signal.SIGTERM)
            async with asyncio.timeout(30):
                assert await process.wait() == 0
    finally:
        await backend.stop()


@pytest.mark.asyncio(loop_factories=["asyncio"])
async def test_run_bind_failure_is_one_clear_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = tmp_path / "node.toml"
        config.write_text(CONFIG.format(bind=f"127.0.0.1:{port}", server="127.0.0.1:9"))
        process = await start(config)
        async with asyncio.timeout(30):
            _, err = await process.communicate()
    assert process.returncode == 1
    assert err.decode().strip().splitlines()[-1] == (
        f"haproxy-py: {config}: cannot start: "
        f"cannot listen on 127.0.0.1:{port}: Address already in use"
    )
    assert b"Traceback" not in err


@pytest.mark.asyncio(loop_factories=["asyncio"])
async def test_run_bad_config_exit_2(tmp_path: Path) -> None:
    config = tmp_path / "node.toml"
    config.write_text(CONFIG.format(bind="nowhere", server="127.0.0.1:9"))
    process = await start(config)
    async with asyncio.timeout(30):
        _, err = await process.communicate()
    assert process.returncode == 2
    expected = 'listeners[0].bind: expected "host:port" (IPv6 as "[addr]:port"), got \'nowhere\''
    assert err.decode() == f"haproxy-py: {config}: {expected}\n"
