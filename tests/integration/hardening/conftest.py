"""The proxy tests' fixtures: real backends, an in-process proxy, asyncio and uvloop."""

from tests.integration.proxy.conftest import (  # noqa: F401 (fixtures and hooks by import)
    _backends,
    _proxy,
    _session,
    pytest_asyncio_loop_factories,
)
