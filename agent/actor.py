"""The agent's one actor: steps from the observers run against the core one at a time.

Observers never touch the core: they post a `Step` (a coroutine function that
returns the core's actions), and this task runs each in turn and hands its
actions to the effects. One actor means the core needs no lock, and the order
of steps is the order the observers saw things in.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import structlog

from agent.actions import Action
from agent.observers import Step
from agent.state import AgentCore

log = structlog.get_logger(__name__)


class Actor:
    """`post(step)` from anywhere; `run()` is the task that applies the steps."""

    def __init__(self, core: AgentCore, effect: Callable[[list[Action]], Awaitable[None]]) -> None:
        self.core = core
        self.effect = effect
        self._queue: asyncio.Queue[Step] = asyncio.Queue()

    def post(self, step: Step) -> None:
        self._queue.put_nowait(step)

    async def run(self) -> None:
        while True:
            step = await self._queue.get()
            try:
                # The fence first: after a stall, steps queued meanwhile (a late keepalive,
                # a watch event) are acted on only once passed deadlines are enforced.
                fenced = self.core.fence(time.monotonic())
                if fenced:
                    log.warning("fence deadline passed before the next step; fenced first")
                    await self.effect(fenced)
                await self.effect(await step())
            finally:
                self._queue.task_done()
