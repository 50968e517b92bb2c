"""Fixtures: a recording raw backend, real aiohttp backends and an in-process proxy."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from tests.integration.adversarial.backend import RecordingBackend
from tests.integration.proxy.conftest import (  # noqa: F401 (fixtures and hooks by import)
    _backends,
    _proxy,
    _session,
    pytest_asyncio_loop_factories,
)


@pytest.fixture(name="recorder")
async def _recorder() -> AsyncIterator[Callable[[], Awaitable[RecordingBackend]]]:
    started: list[RecordingBackend] = []

    async def start() -> RecordingBackend:
        backend = RecordingBackend()
        await backend.start()
        started.append(backend)
        return backend

    yield start
    for backend in started:
        await backend.stop()
