"""`haproxy-py run` as a process of its own, for the tests that need the real command line.

`start(config)` runs it with stderr piped; `read_event(process, "proxy started")`
reads its JSON log lines until that event; `CONFIG` is a node file with one
listener (`{bind}`) and one backend server (`{server}`).
"""

from __future__ import annotations

import asyncio
import json
import sys
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
