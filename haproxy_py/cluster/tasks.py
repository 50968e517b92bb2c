"""Supervision of the daemons' long-lived tasks.

A task that a daemon needs for as long as it runs (a keepalive, a watch, a
registrar, an announcer) must never die silently and leave a live process that
no longer does its job. `supervised` logs an unexpected exception (or an
unexpected return) and either starts the task again after a short backoff, or
re-raises so that the daemon exits and systemd restarts it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import structlog

log = structlog.get_logger(__name__)
T = TypeVar("T")

BACKOFF = 0.1  # first wait before a restart; doubles up to BACKOFF_LIMIT
BACKOFF_LIMIT = 5.0
SETTLE_LIMIT = 1.0  # for cancelled tasks to finish
STEADY = 30.0  # a task that ran this long before failing starts again with the first backoff


class TaskEnded(Exception):
    """A task that should run for ever returned."""


async def supervised(
    name: str, run: Callable[[], Awaitable[None]], *, restart: bool = True, once: bool = False
) -> None:
    """Run `run()` for ever; restart it after a failure (`restart`), or raise the failure.

    `once`: a task with an end (a re-registration): returning is success, not a failure.
    """
    backoff = BACKOFF
    loop = asyncio.get_running_loop()
    while True:
        started = loop.time()
        try:
            await run()
            if once:
                return
            failure: BaseException = TaskEnded(f"task {name} returned")
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            failure = exc
        if not restart:
            log.error("task failed; exiting", task=name, exc_info=failure)
            raise failure
        if loop.time() - started >= STEADY:
            backoff = BACKOFF
        log.error("task failed; restarting it", task=name, retry_in=backoff, exc_info=failure)
        await asyncio.sleep(backoff)
        backoff = min(2 * backoff, BACKOFF_LIMIT)


async def settle(tasks: Sequence[asyncio.Task[Any]], limit: float = SETTLE_LIMIT) -> None:
    """Wait a bounded time for cancelled tasks; name any that do not finish."""
    if not tasks:
        return
    _, pending = await asyncio.wait(tasks, timeout=limit)
    for task in pending:
        log.warning("task did not stop when cancelled", task=task.get_name())


async def unless_stopped(stop: asyncio.Event, work: Awaitable[T]) -> T | None:
    """`work`'s result, or None (`work` cancelled) once `stop` is set first."""
    task = asyncio.ensure_future(work)
    stopped = asyncio.create_task(stop.wait(), name="stop")
    await asyncio.wait([task, stopped], return_when=asyncio.FIRST_COMPLETED)
    stopped.cancel()
    if not task.done():
        task.cancel()
        await settle([task, stopped])
        return None
    return task.result()


async def until_stopped(stop: asyncio.Event, tasks: Sequence[asyncio.Task[Any]]) -> None:
    """Return once `stop` is set or one of `tasks` ends; raise that task's failure."""
    stopped = asyncio.create_task(stop.wait(), name="stop")
    try:
        done, _ = await asyncio.wait([stopped, *tasks], return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopped.cancel()
    for task in done:
        failure = None if task is stopped or task.cancelled() else task.exception()
        if failure is not None:
            raise failure
