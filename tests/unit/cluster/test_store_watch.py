"""A watch ends when its task is cancelled, even when aetcd dropped the cancel."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from haproxy_py.cluster.config import EtcdConfig
from haproxy_py.cluster.store import Store


class SilentStream:
    """A created watch on which nothing ever happens."""

    def __init__(self) -> None:
        self.cancelled = False

    async def __aiter__(self) -> AsyncIterator[Any]:
        await asyncio.Event().wait()
        yield None

    async def cancel(self) -> None:
        self.cancelled = True


async def test_a_cancel_dropped_while_the_watch_was_created_ends_the_watch(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    stream = SilentStream()

    async def created_as_cancelled(what: str, op: Callable[[Any], Awaitable[Any]]) -> Any:
        """What Python 3.11's `asyncio.wait_for` does when the task is cancelled as the awaited
        creation completes: the cancel is taken and the result returned."""
        task = asyncio.current_task()
        assert task is not None
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(0)
        return stream

    store = Store(EtcdConfig(endpoints=("127.0.0.1:1",)), "x")
    monkeypatch.setattr(store, "_call", created_as_cancelled)

    async def follow() -> None:
        async for _ in store.watch("/x/", 1):
            pass

    task = asyncio.create_task(follow())
    done, _ = await asyncio.wait({task}, timeout=10)
    assert done, "the watch went on after its task was cancelled"
    assert task.cancelled()
    assert stream.cancelled, "the created watch was left open in etcd"
