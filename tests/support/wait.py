"""Waiting for a condition with a deadline: the one polling helper of the suite.

    value = eventually(lambda: find_row(), within=10, what="the row in the table")
    view = await eventually_async(read_leader, within=20, what="a leader")

`check` is called until it returns something truthy, which is returned; after
`within` seconds the test fails naming `what` and the last value seen. The
async form also accepts a `check` that returns an awaitable. Exceptions listed
in `ignoring` count as "not yet" (a server still starting refuses connections);
`detail()` is added to the failure message (say, the last status seen).
Deadlines are generous on purpose: the machine is shared, and a test that waits
too long still passes; speed belongs in `bench/`.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, cast

T = TypeVar("T")
WITHIN = 20.0


def eventually(
    check: Callable[[], T],
    within: float = WITHIN,
    what: str = "",
    every: float = 0.05,
    ignoring: tuple[type[BaseException], ...] = (),
    detail: Callable[[], object] = lambda: "",
) -> T:
    """Poll `check` until its result is truthy, and return it; fail naming `what` after `within`."""
    deadline = time.monotonic() + within
    while True:
        last: Any
        try:
            last = check()
        except ignoring as exc:
            last = exc
        else:
            if last:
                return cast(T, last)
        if time.monotonic() >= deadline:
            raise AssertionError(_failure(check, within, what, last, detail))
        time.sleep(every)


async def eventually_async(
    check: Callable[[], T | Awaitable[T]],
    within: float = WITHIN,
    what: str = "",
    every: float = 0.02,
    ignoring: tuple[type[BaseException], ...] = (),
    detail: Callable[[], object] = lambda: "",
) -> T:
    """`eventually` for the event loop: `check` may be sync or async; sleeps without blocking."""
    deadline = time.monotonic() + within
    while True:
        last: Any
        try:
            last = check()
            if inspect.isawaitable(last):
                last = await last
        except ignoring as exc:
            last = exc
        else:
            if last:
                return cast(T, last)
        if time.monotonic() >= deadline:
            raise AssertionError(_failure(check, within, what, last, detail))
        await asyncio.sleep(every)


def _failure(
    check: Callable[[], object],
    within: float,
    what: str,
    last: object,
    detail: Callable[[], object],
) -> str:
    name = what or getattr(check, "__qualname__", repr(check))
    more = detail()
    return f"timed out after {within:g} s waiting for {name} (last: {last!r}){more and f' {more}'}"
