"""The master's line to one worker: messages with file descriptors over a socketpair.

A message is a pickled dict (both ends are this program, started by the
master itself) sent as one SOCK_SEQPACKET record, so the boundaries and the
file descriptors travelling with it (listening sockets, the shared counts)
arrive together. `call` sends a request and waits for the reply with the same
`id`; anything else goes to the handler, which may answer by returning a dict.
"""

from __future__ import annotations

import asyncio
import itertools
import pickle
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import structlog

log = structlog.get_logger(__name__)

MAX_MESSAGE = 1 << 20
MAX_FDS = 64

Message = dict[str, Any]
# (message, file descriptors received with it) -> a reply, None (none), or an awaitable of one
Handler = Callable[[Message, list[int]], Awaitable[Message | None] | Message | None]


def pair() -> tuple[socket.socket, socket.socket]:
    """(master's end, worker's end); the worker's end is inheritable."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    for sock in (ours, theirs):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, MAX_MESSAGE)
    theirs.set_inheritable(True)
    return ours, theirs


class Channel:
    """One end of a control socketpair, read by the running event loop."""

    def __init__(self, sock: socket.socket, handler: Handler, on_close: Callable[[], None]) -> None:
        self.sock = sock
        self.handler = handler
        self.on_close = on_close
        self.loop = asyncio.get_running_loop()
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[Message]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.closed = False
        sock.setblocking(False)
        self.loop.add_reader(sock.fileno(), self._readable)

    def send(self, message: Message, fds: list[int] | tuple[int, ...] = ()) -> bool:
        """Send now; False if the other end is gone or not reading (never blocks)."""
        if self.closed:
            return False
        try:
            socket.send_fds(self.sock, [pickle.dumps(message)], list(fds))
        except OSError as exc:
            log.warning("control message not sent", op=message.get("op"), error=str(exc))
            return False
        return True

    async def call(
        self, op: str, fds: list[int] | tuple[int, ...] = (), limit: float = 10.0, **args: Any
    ) -> Message:
        """Send a request and wait for its reply; ConnectionError if none comes."""
        request_id = next(self._ids)
        future: asyncio.Future[Message] = self.loop.create_future()
        self._waiting[request_id] = future
        try:
            if not self.send({"op": op, "id": request_id, **args}, fds):
                raise ConnectionError(f"{op}: the other process is gone")
            async with asyncio.timeout(limit):
                return await future
        except TimeoutError:
            raise ConnectionError(f"{op}: no answer in {limit:g}s") from None
        finally:
            self._waiting.pop(request_id, None)

    def _readable(self) -> None:
        try:
            data, fds, _, _ = socket.recv_fds(self.sock, MAX_MESSAGE, MAX_FDS)
        except BlockingIOError:
            return
        except OSError:
            data, fds = b"", []
        if not data:
            self.close()
            return
        message: Message = pickle.loads(data)
        reply_to = message.get("reply")
        if reply_to is not None:
            future = self._waiting.get(reply_to)
            if future is not None and not future.done():
                future.set_result(message)
            return
        task = self.loop.create_task(self._handle(message, fds))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _handle(self, message: Message, fds: list[int]) -> None:
        try:
            answer = self.handler(message, fds)
            if isinstance(answer, Awaitable):
                answer = await answer
        except Exception as exc:  # one failed request must not end the process
            log.error("control request failed", op=message.get("op"), exc_info=exc)
            answer = {"error": str(exc) or exc.__class__.__name__}
        if message.get("id") is not None:
            self.send({"reply": message["id"], **(answer or {})})

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.loop.remove_reader(self.sock.fileno())
        self.sock.close()
        for future in self._waiting.values():
            if not future.done():
                future.set_exception(ConnectionError("the other process is gone"))
        self.on_close()
