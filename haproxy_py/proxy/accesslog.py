"""The access log: one JSON line per HTTP exchange and per WebSocket session, off the hot path.

A request costs rendering one line (a cached timestamp, C-escaped strings, an
f-string) and a list append; the strings that repeat (method, backend, server,
client address) are escaped once and looked up after that. Lines are buffered
(nginx's `access_log ... buffer=64k flush=1s` is the model) and handed to a
writer thread, so a slow disk or a journal under pressure never blocks the
event loop: when more than `max_pending` bytes wait for the writer, new
batches are dropped and counted (`dropped`), never queued without bound. The
lines have the keys, and the JSON shape, of the structlog lines the rest of
the daemon writes (`event`, `level`, `timestamp`), so one log consumer reads
both. Each write(2) is at most PIPE_BUF bytes of whole lines, so another
writer of the same pipe cannot cut a line.
"""

from __future__ import annotations

import asyncio
import logging
import os
import select
import stat
import threading
import time
from collections.abc import Callable
from json.encoder import encode_basestring_ascii as quote
from queue import SimpleQueue

import structlog

BUFFER = 64 * 1024  # bytes of lines gathered before they are handed to the writer
FLUSH_AFTER = 1.0  # seconds a line may wait in the buffer
MAX_PENDING = 4 * 1024 * 1024  # bytes handed over but not yet written: beyond it, drop
MAX_QUOTED = 4096  # escaped strings kept for reuse (then the cache starts again)
PIPE_BUF = 4096  # writes up to this size to a pipe are atomic

_STOP = (b"", 0)


class CachedClock:
    """ISO 8601 UTC timestamps with milliseconds: the seconds part is formatted once a
    second, the whole stamp once a millisecond (a busy loop logs several lines in one)."""

    def __init__(self, now: Callable[[], float] = time.time) -> None:
        self._now = now
        self._second = -1
        self._prefix = ""
        self._milli = -1
        self._stamp = ""

    def stamp(self) -> str:
        milli = int(self._now() * 1000)
        if milli != self._milli:
            self._milli = milli
            second, fraction = divmod(milli, 1000)
            if second != self._second:
                self._second = second
                self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._stamp = f"{self._prefix}.{fraction:03d}Z"
        return self._stamp


def two_decimals(value: float) -> str:
    """A duration (not negative) with two decimals, a half rounded up, from integers only.

    Compiled, a line with no format spec in it is joined from its parts (with one, its
    whole template is parsed again for every line), and a float's own formatter (`.2f`)
    costs a request as much as the rest of its line.
    """
    whole, hundredths = divmod(int(value * 100 + 0.5), 100)
    return f"{whole}.{hundredths // 10}{hundredths % 10}"


def write_fd(fd: int) -> Callable[[bytes], None]:
    """A sink writing to `fd` (blocking or not). To a pipe or a socket, which another
    process may share, in slices of whole lines of at most PIPE_BUF; to a file, in one
    write (each costs the loop a hand-over of the interpreter lock)."""
    mode = os.fstat(fd).st_mode
    slice_size = PIPE_BUF if stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode) else 0

    def write(data: bytes) -> None:
        view = memoryview(data)
        start = 0
        while start < len(data):
            end = len(data)
            if slice_size and end - start > slice_size:
                end = data.rfind(b"\n", start, start + slice_size) + 1 or start + slice_size
            try:
                start += os.write(fd, view[start:end])
            except BlockingIOError:
                select.select([], [fd], [], 1.0)

    return write


class AccessLog:
    """Buffered access log lines of one event loop (the one running), written by one thread."""

    def __init__(
        self,
        sink: Callable[[bytes], None] | None = None,
        buffer: int = BUFFER,
        flush_after: float = FLUSH_AFTER,
        max_pending: int = MAX_PENDING,
        clock: CachedClock | None = None,
    ) -> None:
        # Off when the daemon's log level hides info lines (as structlog would drop them).
        self.enabled = structlog.get_logger(__name__).is_enabled_for(logging.INFO)
        self.sink = sink or write_fd(2)  # called in the writer thread
        self.buffer = buffer
        self.flush_after = flush_after
        self.max_pending = max_pending
        self.clock = clock or CachedClock()
        self._quoted: dict[str, str] = {}
        self.dropped = 0  # lines lost: the writer fell behind, or the sink failed
        self._lines: list[str] = []
        self._size = 0
        self._timer: asyncio.TimerHandle | None = None
        self._queue: SimpleQueue[tuple[bytes, int]] = SimpleQueue()
        self._pending = 0  # bytes queued, not yet written
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._writer: threading.Thread | None = None

    def http(
        self,
        method: str,
        path: str,
        status: int,
        backend: str,
        server: str | None,
        duration_ms: float,
        bytes_in: int,
        bytes_out: int,
        client: str,
        error: str | None,
    ) -> None:
        if not self.enabled:
            return
        known = self._quoted
        to = "null" if server is None else known.get(server) or self._quote(server)
        err = "" if error is None else f', "error": {quote(error)}'
        duration = two_decimals(duration_ms)
        self._add(
            f'{{"method": {known.get(method) or self._quote(method)}, "path": {quote(path)}, '
            f'"status": {status}, "backend": {known.get(backend) or self._quote(backend)}, '
            f'"server": {to}, "duration_ms": {duration}, "bytes_in": {bytes_in}, '
            f'"bytes_out": {bytes_out}, "client": {known.get(client) or self._quote(client)}'
            f'{err}, "event": "http", "level": "info", "timestamp": "{self.clock.stamp()}"}}\n'
        )

    def _quote(self, text: str) -> str:
        """`text` escaped as a JSON string, kept for the next line that names it."""
        if len(self._quoted) >= MAX_QUOTED:
            self._quoted.clear()
        quoted = self._quoted[text] = quote(text)
        return quoted

    def websocket(
        self,
        backend: str,
        server: str,
        client: str,
        duration_ms: float,
        bytes_in: int,
        bytes_out: int,
        close_code: int | None,
        closed_by: str | None,
    ) -> None:
        if not self.enabled:
            return
        duration = two_decimals(duration_ms)
        self._add(
            f'{{"backend": {quote(backend)}, "server": {quote(server)}, '
            f'"client": {quote(client)}, "duration_ms": {duration}, '
            f'"bytes_in": {bytes_in}, "bytes_out": {bytes_out}, '
            f'"close_code": {"null" if close_code is None else close_code}, '
            f'"closed_by": {"null" if closed_by is None else quote(closed_by)}, '
            f'"event": "websocket", "level": "info", "timestamp": "{self.clock.stamp()}"}}\n'
        )

    def _add(self, line: str) -> None:
        self._lines.append(line)
        self._size += len(line)
        if self._size >= self.buffer:
            self.flush()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self.flush_after, self.flush)

    def flush(self) -> None:
        """Hand the buffered lines to the writer thread (or drop them if it is too far behind)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._lines:
            return
        data = "".join(self._lines).encode()
        count = len(self._lines)
        self._lines.clear()
        self._size = 0
        with self._lock:
            if self._pending + len(data) > self.max_pending:
                self.dropped += count
                return
            self._pending += len(data)
        if self._writer is None:
            self._writer = threading.Thread(target=self._write_loop, name="access-log", daemon=True)
            self._writer.start()
        self._queue.put((data, count))

    def _write_loop(self) -> None:
        while True:
            data, count = self._queue.get()
            if not count:
                return
            try:
                self.sink(data)
            except OSError:
                with self._lock:
                    self.dropped += count
            with self._lock:
                self._pending -= len(data)
                self._idle.notify_all()

    def sync(self, timeout: float = 5.0) -> bool:
        """Flush and wait (blocking) until the writer has written everything; False on timeout."""
        self.flush()
        return self.written(timeout)

    def written(self, timeout: float) -> bool:
        """Wait (blocking, any thread) until every flushed line is written; False on timeout."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while self._pending:
                left = deadline - time.monotonic()
                if left <= 0 or not self._idle.wait(left):
                    return False
        return True

    def close(self, timeout: float = 5.0) -> None:
        """Wait for what was flushed and stop the writer thread (any thread; a later flush
        starts a new one). Blocking: the event loop flushes, then closes in a thread."""
        self.written(timeout)
        thread, self._writer = self._writer, None
        if thread is not None:
            self._queue.put(_STOP)
            thread.join(timeout)
