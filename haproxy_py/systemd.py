"""systemd's notify protocol, in a few lines of our own: readiness and the watchdog.

Under a unit with `Type=notify` systemd passes a datagram socket in
$NOTIFY_SOCKET (a path, or `@name` in the abstract namespace) and, with
`WatchdogSec=`, the interval in $WATCHDOG_USEC (for the PID in $WATCHDOG_PID,
when set). Outside systemd both are absent and nothing is sent.

    systemd.start(lambda: proxy_listening, on_ready)   # via `haproxy_py.daemon.ready`

`start` runs one task on the daemon's own event loop: it sends READY=1 (and
calls `on_ready`, which logs `ready`) once `ready()` is true (the proxy
listens, the agent holds its lease, the controller has read etcd and
campaigned or stood by), and WATCHDOG=1 every half interval.
Because the feeding runs on the loop, a loop that hangs stops feeding, and
systemd kills the daemon (SIGABRT) and restarts it. The task ends with the loop.
"""

from __future__ import annotations

import asyncio
import math
import os
import socket
from collections.abc import Callable, Mapping

READY_POLL = 0.05  # seconds between looks at `ready()` until it holds
_tasks: set[asyncio.Task[None]] = set()  # a running task must be referenced somewhere


def notify(message: str, environ: Mapping[str, str] | None = None) -> bool:
    """Send `message` (e.g. "READY=1") to systemd; False when not under systemd or it failed."""
    address = (os.environ if environ is None else environ).get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]  # abstract namespace
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(message.encode(), address)
    except OSError:
        return False
    return True


def watchdog_interval(environ: Mapping[str, str] | None = None) -> float | None:
    """Seconds within which systemd expects WATCHDOG=1, or None when there is no watchdog."""
    env = os.environ if environ is None else environ
    usec, pid = env.get("WATCHDOG_USEC", ""), env.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    if pid and pid != str(os.getpid()):
        return None  # meant for another process (e.g. our parent)
    return int(usec) / 1_000_000


async def supervise(
    ready: Callable[[], bool],
    environ: Mapping[str, str] | None = None,
    on_ready: Callable[[], None] = lambda: None,
) -> None:
    """READY=1 (and `on_ready()`) once `ready()` holds; WATCHDOG=1 every half interval
    meanwhile and after."""
    interval = watchdog_interval(environ)
    loop = asyncio.get_running_loop()
    fed = -math.inf

    def feed() -> None:
        nonlocal fed
        if interval is not None and loop.time() - fed >= interval / 2:
            notify("WATCHDOG=1", environ)
            fed = loop.time()

    while not ready():
        feed()
        await asyncio.sleep(READY_POLL)
    notify("READY=1", environ)
    on_ready()
    while interval is not None:
        feed()
        await asyncio.sleep(interval / 2)


def start(
    ready: Callable[[], bool], on_ready: Callable[[], None] = lambda: None
) -> asyncio.Task[None]:
    """Run `supervise(ready, on_ready=on_ready)` on the running loop (outside systemd only
    `on_ready` has an effect: the notifications go nowhere, and there is no watchdog)."""
    supervising = supervise(ready, on_ready=on_ready)
    task = asyncio.get_running_loop().create_task(supervising, name="systemd-notify")
    _tasks.add(task)
    task.add_done_callback(_tasks.discard)
    return task
