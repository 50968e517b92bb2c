"""Server health: a pure up/down tracker and the asyncio loops that feed it.

`Tracker` counts consecutive results: `fall` failures take a server out,
`rise` successes (active checks only) bring it back. Passive results (a
connect failure or a 5xx seen by the proxy) count toward `fall` too, so a
dead server is out after `fall` failed requests even between checks. A backend
without an active check has no way to see recovery, so a passively failed
server is simply tried again after `retry_down_after` seconds (NGINX's
`fail_timeout`).

Active checks use aiohttp's client: they are few, so its per-request cost
does not matter here. A backend with `send_proxy` expects a PROXY header first
on every connection, which aiohttp cannot send, so its checks are a plain
HTTP/1.1 GET on a stream that starts with a LOCAL header (v2 `LOCAL`, v1
`UNKNOWN`: "the proxy's own connection").
"""

from __future__ import annotations

import asyncio
import functools
import ssl
import time
from collections.abc import Callable

import aiohttp
import structlog

from haproxy_py.cluster.tasks import supervised
from haproxy_py.proxy import proxyproto
from haproxy_py.proxy.balancer import Server
from haproxy_py.proxy.config import HealthConfig

log = structlog.get_logger(__name__)


class Tracker:
    """The health verdict of one server; `record*` return True when `server.up` flipped."""

    __slots__ = (
        "config",
        "down_since",
        "fail_streak",
        "last_error",
        "latency",
        "ok_streak",
        "server",
    )

    def __init__(self, server: Server, config: HealthConfig) -> None:
        self.server = server
        self.config = config
        self.ok_streak = 0
        self.fail_streak = 0
        self.down_since = 0.0
        self.latency: float | None = None  # seconds, last active check
        self.last_error = ""

    def record(self, ok: bool, now: float, error: str = "") -> bool:
        """An active check result."""
        if ok:
            self.fail_streak = 0
            self.ok_streak += 1
            if not self.server.up and self.ok_streak >= self.config.rise:
                self.server.up = True
                self.last_error = ""
                return True
            return False
        return self._failure(now, error)

    def passive_failure(self, now: float, error: str) -> bool:
        return self.config.passive and self._failure(now, error)

    def passive_success(self) -> None:
        if self.config.passive:
            self.fail_streak = 0

    def revive_due(self, now: float) -> bool:
        """Without active checks: bring a server back for another try once its time is up."""
        if self.server.up or now - self.down_since < self.config.retry_down_after:
            return False
        self.server.up = True
        self.fail_streak = 0
        return True

    def _failure(self, now: float, error: str) -> bool:
        self.ok_streak = 0
        self.fail_streak += 1
        self.last_error = error
        if self.server.up and self.fail_streak >= self.config.fall:
            self.server.up = False
            self.down_since = now
            return True
        return False


OnChange = Callable[[Tracker, str], None]


class Checker:
    """Runs the active checks (or the passive revive timer) of one backend's servers."""

    def __init__(
        self,
        backend: str,
        trackers: list[Tracker],
        config: HealthConfig,
        on_change: OnChange,
        tls: tuple[ssl.SSLContext, str | None] | None = None,
        send_proxy: str | None = None,
    ) -> None:
        self.tls = tls  # for a `tls = true` backend: its client context and server name
        self.send_proxy = send_proxy  # "v1"/"v2": each check connection starts with a header
        self.backend = backend
        self.trackers = trackers
        self.config = config
        self.on_change = on_change
        self._tasks: list[asyncio.Task[None]] = []
        self._session: aiohttp.ClientSession | None = None

    def start(self) -> None:
        if self.config.path is None:
            revive = supervised(f"passive revive {self.backend}", self._revive_loop)
            self._tasks.append(asyncio.create_task(revive))
            return
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self.config.timeout),
            cookie_jar=aiohttp.DummyCookieJar(),
            connector=aiohttp.TCPConnector(force_close=True),
        )
        for tracker in self.trackers:
            name = f"health check {self.backend}/{tracker.server.address}"
            check = supervised(name, functools.partial(self._check_loop, tracker))
            self._tasks.append(asyncio.create_task(check))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _check_loop(self, tracker: Tracker) -> None:
        assert self._session is not None and self.config.path is not None
        scheme, context, name = "http", None, None
        if self.tls is not None:
            scheme, (context, name) = "https", self.tls
            name = name or tracker.server.host
        url = f"{scheme}://{tracker.server.address}{self.config.path}"
        while True:
            started = time.monotonic()
            error = ""
            try:
                if self.send_proxy is not None:
                    async with asyncio.timeout(self.config.timeout):
                        status = await _check_with_header(
                            tracker.server, self.config.path, self.send_proxy, context, name
                        )
                else:
                    async with self._session.get(
                        url, allow_redirects=False, ssl=context or True, server_hostname=name
                    ) as response:
                        await response.read()
                        status = response.status
                if status not in self.config.expect_status:
                    error = f"health check got status {status}"
            except TimeoutError:
                error = f"health check timed out after {self.config.timeout:g}s"
            except (aiohttp.ClientError, OSError) as exc:
                error = f"health check failed: {exc.__class__.__name__}: {exc}"
            now = time.monotonic()
            tracker.latency = now - started
            if tracker.record(not error, now, error):
                self.on_change(tracker, error or "health check passed")
            await asyncio.sleep(max(0.0, self.config.interval - (time.monotonic() - started)))

    async def _revive_loop(self) -> None:
        step = max(0.05, self.config.retry_down_after / 4)
        while True:
            await asyncio.sleep(step)
            now = time.monotonic()
            for tracker in self.trackers:
                if tracker.revive_due(now):
                    self.on_change(tracker, "retrying after passive failures")


async def _check_with_header(
    server: Server, path: str, version: str, context: ssl.SSLContext | None, name: str | None
) -> int:
    """GET `path` on a connection that starts with a PROXY LOCAL header; the status code."""
    reader, writer = await asyncio.open_connection(server.host, server.port)
    try:
        writer.write(proxyproto.encode_v2_local() if version == "v2" else b"PROXY UNKNOWN\r\n")
        if context is not None:
            await writer.start_tls(context, server_hostname=name)
        writer.write(
            f"GET {path} HTTP/1.1\r\nHost: {server.address}\r\nConnection: close\r\n"
            "User-Agent: haproxy-py-health\r\n\r\n".encode()
        )
        line = await reader.readline()
        parts = line.split(None, 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
            raise aiohttp.ClientError(f"not an HTTP response: {line[:40]!r}")
        return int(parts[1])
    finally:
        writer.close()
