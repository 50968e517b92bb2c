"""`haproxy-py run` as a process of its own, for the tests that need the real command line.

`start(config)` runs it with stderr piped; `read_event(process, "proxy started")`
reads its JSON log lines until that event; `CONFIG` is a node file with one
listener (`{bind}`) and one backend server (`{server}`). `running(config, server)`
does all three and kills the process on the way out if the test did not stop it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path

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


@contextlib.asynccontextmanager
async def running(
    config: Path, server: str
) -> AsyncIterator[tuple[asyncio.subprocess.Process, dict[str, object]]]:
    """`haproxy-py run` on `CONFIG` for `server`: the process and its "proxy started" event."""
    await asyncio.to_thread(config.write_text, CONFIG.format(bind="127.0.0.1:0", server=server))
    process = await start(config)
    try:
        yield process, await read_event(process, "proxy started")
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
