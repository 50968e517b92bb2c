"""The `lab` fixture: a two-node cluster of real daemons in namespaces, with a client probing
the VIP, a watcher that fails the test on any VIP double, and the first VIP holder as `active`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from haproxy_py.cluster.config import EtcdConfig
from haproxy_py.cluster.store import Store
from tests.lab.agent.cluster import Lab, Watcher, cluster
from tests.lab.agent.support import plumbing
from tests.support.wait import eventually_async


@pytest.fixture
async def lab(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Lab]:
    """Parametrized indirectly, the parameter is the agents' node-record write delay (a
    record newly listing a VIP), or (delay, "every") for every write of the record, or
    (delay, "every" or "new", drain) to hold back each drain of a released VIP's clients."""
    param = getattr(request, "param", 0.0)
    delay, every = (param[0], param[1] == "every") if isinstance(param, tuple) else (param, False)
    drain = float(param[2]) if isinstance(param, tuple) and len(param) > 2 else 0.0
    with (
        plumbing(tmp_path, "hvk") as (plumb, net),
        cluster(
            tmp_path,
            plumb,
            net,
            publish_delay=float(delay),
            publish_every=every,
            drain_delay=drain,
        ) as c,
    ):
        watcher = Watcher({n.name: n.netns for n in c.nodes.values()}, (c.vip,))
        watcher.start()
        store = Store(EtcdConfig((c.etcd.endpoint,), timeout=2.0), "lab")
        lab = Lab(c, watcher, store)
        try:
            try:
                await eventually_async(
                    lambda: len(watcher.holder(c.vip)) == 1, 60, "the VIP on a node"
                )
                (first,) = watcher.holder(c.vip)
                lab.active = c.nodes[first]
                lab.standby = next(n for n in c.nodes.values() if n.name != first)
                await eventually_async(
                    lambda: lab.healthy(lab.standby.name), 60, "the standby healthy"
                )
            except AssertionError as exc:
                raise AssertionError(f"{exc}\n{c.logs()}") from None
            prober = c.start_prober(300)
            await eventually_async(
                lambda: lab.served_by(first, 0), 60, "the client answered through the VIP"
            )
            yield lab
            c.lab.kill(prober)
        finally:
            watcher.stop()
            await store.close()
