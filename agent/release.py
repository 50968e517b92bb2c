"""The clean stop (SIGTERM): hand every VIP over, then revoke the lease.

The node record already says `stopping`; the proxy holds each VIP's clients
(WebSockets, keep-alive connections) until they acknowledged all
(`Handover.hold`); the core drops every address and releases each VIP's key
once the kernel shows it gone, so the controller reassigns it at once, as a
planned move. Each released VIP's connections are
closed cleanly when its new owner holds it (`agent.handover`), and only then
is the lease revoked: revoking first would delete the node's keys before the
next owners hold them.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import structlog

from agent.actions import Action
from agent.effects import Effects
from agent.handover import Handover
from agent.observers import Step
from agent.state import AgentCore
from haproxy_py.cluster.store import StoreError
from haproxy_py.cluster.storeapi import KVStore

log = structlog.get_logger(__name__)

STOP_STEP_LIMIT = 5.0  # removing the addresses and revoking the lease at stop, at most


async def release_all(
    core: AgentCore,
    post: Callable[[Step], None],
    effects: Effects,
    handover: Handover,
    store: KVStore,
    handover_wait: float,
) -> None:
    """Drop every VIP and release its key once the kernel shows it gone; close each one's
    connections when its new owner holds it; then revoke the lease."""
    started = time.monotonic()
    held = sorted(core.held)
    await handover.hold(held)

    async def stop_step() -> list[Action]:
        return core.stop(time.monotonic())

    post(stop_step)
    try:
        async with asyncio.timeout(STOP_STEP_LIMIT):
            await effects.released.wait()
    except TimeoutError:
        log.error("VIPs not released in time; the kernel lifetime and the lease remove them")
    released = time.monotonic()
    # those whose release acknowledgement already started it are not told twice
    handover.released(v for v in held if v not in handover.told)
    await handover.finish(handover_wait + 1.0)
    if core.lease_id is not None:
        try:
            await store.revoke(core.lease_id)
        except StoreError as exc:
            log.warning("lease revoke failed; it expires by itself", error=str(exc))
    log.info(
        "agent stopped",
        vips=held,
        release_ms=round((released - started) * 1000, 1),
        total_ms=round((time.monotonic() - started) * 1000, 1),
    )
