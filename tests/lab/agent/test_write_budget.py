"""etcd holds agreement, not telemetry: under client traffic, with nothing changing, the
cluster's etcd revision advances by at most ~6 per node per minute (no connection counts or
other volatile figures are written)."""

from __future__ import annotations

import asyncio

import pytest

from tests.lab.agent.cluster import Lab

pytestmark = pytest.mark.lab
WINDOW = 20.0  # seconds observed
PER_NODE_PER_MINUTE = 6


async def test_steady_traffic_writes_almost_nothing_to_etcd(lab: Lab) -> None:
    await asyncio.sleep(2.0)  # the start-up writes (registration, assignment) are done
    _, before = await lab.store.get_prefix(lab.store.schema.prefix)
    await asyncio.sleep(WINDOW)  # the prober keeps sending requests through the VIP meanwhile
    _, after = await lab.store.get_prefix(lab.store.schema.prefix)
    rows = lab.client_log(0)
    assert len(rows) > WINDOW * 20, "the client kept the proxies busy"
    budget = PER_NODE_PER_MINUTE * len(lab.c.nodes) * WINDOW / 60
    assert after - before <= budget, f"etcd revision advanced by {after - before} in {WINDOW:g} s"
    lab.check()
