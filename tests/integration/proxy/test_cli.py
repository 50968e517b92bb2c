"""`haproxy-py run` as a real process: serves, logs JSON, stops cleanly on SIGTERM."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import sys
from pathlib import Path

import pytest

from tests.integration.proxy.support import Backend

CONFIG = """\
[node]
name = "cli-node"

[admin]
bind = "127.0.0.1:0"

[[listeners]]
name = "web"
bind = "{bind}"

[[routes]]
path_prefix = "/"
backend = "app"

[backends.app]
servers = ["{server}"]
"""


async def start(config: Path) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "haproxy_py.proxy",
        "run",
        "--config",
        str(config),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )


async def read_event(
    process: asyncio.subprocess.Process, event: str, master: bool = True
) -> dict[str, object]:
    """The next log record `event`, of the master only (`master`: its workers' records
    carry a `worker` key)."""
    assert process.stderr is not None
    async with asyncio.timeout(30):
        while True:
            line = await process.stderr.readline()
            assert line, "process ended before logging " + event
            record = json.loads(line)
            if record.get("event") == event and not (master and "worker" in record):
                return record


@pytest.mark.asyncio(loop_factories=["asyncio"])
async def test_run_serves_and_stops_on_sigterm(tmp_path: Path) -> None:
    backend = Backend("cli")
    await backend.start()
    config = tmp_path / "node.toml"
    config.write_text(CONFIG.format(bind="127.0.0.1:0", server=backend.address))
    process = await start(config)
    try:
        started = await read_event(process, "proxy started")
        assert started["loop"] == "uvloop"
        host, port = str(started["listeners"]["web"]).rsplit(":", 1)  # type: ignore[index]
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
        if process.returncode is None:
            process.kill()
            await process.wait()
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
        f"{config}: cannot start: cannot listen on 127.0.0.1:{port}: Address already in use"
    )
    assert b"Traceback" not in err


@pytest.mark.asyncio(loop_factories=["asyncio"])
async def test_run_bad_config_exit_1(tmp_path: Path) -> None:
    config = tmp_path / "node.toml"
    config.write_text(CONFIG.format(bind="nowhere", server="127.0.0.1:9"))
    process = await start(config)
    async with asyncio.timeout(30):
        _, err = await process.communicate()
    assert process.returncode == 1
    expected = 'listeners[0].bind: expected "host:port" (IPv6 as "[addr]:port"), got \'nowhere\''
    assert err.decode() == f"{config}: {expected}\n"
