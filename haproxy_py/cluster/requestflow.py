"""An operator request's round trip: write `requests/<id>`, wait for the controller's result.

hactl and the tests submit through any `KVStore`; the controller answers by
rewriting the same key with a final `result` (see `intents.Request`).
"""

from __future__ import annotations

import asyncio
import contextlib

from haproxy_py.cluster.intents import Request
from haproxy_py.cluster.storeapi import KVStore
from haproxy_py.cluster.storeerrors import RequestTimeout, StoreError


async def submit(store: KVStore, request: Request) -> Request:
    """Store a new request (create-if-absent); returns it with its mod_revision."""
    key = store.schema.request(request.id)
    if not await store.create(key, request.to_json()):
        raise StoreError(f"request {request.id} already exists")
    stored = await store.get(key)
    parsed = Request.parse(request.id, stored.value, stored.mod_revision) if stored else None
    return parsed or request


async def wait_result(store: KVStore, request_id: str, seconds: float) -> Request:
    """Wait until the request has a final result; RequestTimeout after `seconds`."""
    key = store.schema.request(request_id)
    last: Request | None = None

    async def follow() -> Request:
        nonlocal last
        kv = await store.get(key)
        if kv is None:
            raise StoreError(f"request {request_id} does not exist")
        last = Request.parse(request_id, kv.value, kv.mod_revision)
        if last is not None and not last.pending:
            return last
        async with contextlib.aclosing(store.watch(key, kv.mod_revision + 1)) as events:
            async for event in events:
                if event.kind == "delete":
                    raise StoreError(f"request {request_id} was deleted before it finished")
                if event.kind == "put" and event.key == key:
                    last = Request.parse(request_id, event.value, event.mod_revision)
                    if last is not None and not last.pending:
                        return last
        raise AssertionError("watch ended")  # pragma: no cover - watch never ends

    try:
        async with asyncio.timeout(seconds):
            return await follow()
    except TimeoutError:
        status = last.result.status if last and last.result else "not picked up"
        raise RequestTimeout(
            f"request {request_id}: no final result after {seconds:g} s ({status}); "
            "is a controller running?",
            last,
        ) from None
