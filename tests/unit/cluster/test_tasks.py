"""Supervised tasks restart after a failure, or take the daemon down; never die silently."""

from __future__ import annotations

import asyncio

import pytest

from haproxy_py.cluster import tasks
from haproxy_py.cluster.tasks import TaskEnded, supervised


async def test_a_failing_task_is_started_again(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tasks, "BACKOFF", 0.001)
    runs = 0
    done = asyncio.Event()

    async def flaky() -> None:
        nonlocal runs
        runs += 1
        if runs < 3:
            raise RuntimeError("boom")
        done.set()
        await asyncio.Event().wait()

    task = asyncio.create_task(supervised("flaky", flaky))
    await asyncio.wait_for(done.wait(), 5)
    assert runs == 3
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_without_restart_the_failure_ends_the_supervisor() -> None:
    async def broken() -> None:
        raise ValueError("bad")

    with pytest.raises(ValueError, match="bad"):
        await supervised("broken", broken, restart=False)


async def test_a_task_that_returns_counts_as_failed() -> None:
    async def quits() -> None:
        return None

    with pytest.raises(TaskEnded):
        await supervised("quits", quits, restart=False)


async def test_a_task_with_an_end_returns_when_done(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tasks, "BACKOFF", 0.001)
    runs = 0

    async def twice() -> None:
        nonlocal runs
        runs += 1
        if runs == 1:
            raise OSError("first attempt")

    await asyncio.wait_for(supervised("regrant", twice, once=True), 5)
    assert runs == 2
