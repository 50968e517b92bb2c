"""A lapsing leader (`[controller] lapse`, the fast profile): its lease is granted a second more
than it counts on, it says so in `controller/leader`, and a keepalive answered after that
second gives the leadership and the lease up."""

from __future__ import annotations

from controller.election import Election
from haproxy_py.cluster.memstore import MemoryStore


class Clock:
    now = 0.0

    def __call__(self) -> float:
        return self.now


class SlowStore(MemoryStore):
    """Each keepalive is answered `delay` s after it was sent."""

    def __init__(self, clock: Clock) -> None:
        super().__init__(clock=clock)
        self.clock = clock
        self.delay = 0.0

    async def keepalive(self, lease_id: int) -> int:
        ttl = await super().keepalive(lease_id)
        self.clock.now += self.delay
        return ttl


async def leader(lapse: bool) -> tuple[Election, SlowStore, Clock]:
    clock = Clock()
    store = SlowStore(clock)
    election = Election(store, "c1", 1, 0.25, monotonic=clock, lapse=lapse)
    assert await election.campaign()
    return election, store, clock


async def test_the_leader_asks_a_second_more_and_declares_its_lapse() -> None:
    election, store, _ = await leader(lapse=True)
    view = await store.read_view()
    assert view.leader is not None and view.leader.lapse == 1
    assert election.lease is not None
    assert (await store.lease_time_to_live(election.lease))[1] == 2
    assert election.deadline == 1.0  # what it counts on: 1 s, not etcd's 2


async def test_a_keepalive_answered_after_the_lapse_ends_the_leadership() -> None:
    election, store, clock = await leader(lapse=True)
    clock.now, store.delay = 0.5, 0.1
    await election.refresh()  # sent 0.5, answered 0.6: leads until 1.5
    assert election.deadline == 1.5 and election.leading(await store.read_view())
    clock.now, store.delay = 1.4, 0.2
    await election.refresh()  # answered at 1.6: a standby may have revoked it at 1.5
    assert election.lease is None and election.revision is None


async def test_without_lapse_a_late_answer_still_renews() -> None:
    election, store, clock = await leader(lapse=False)
    view = await store.read_view()
    assert view.leader is not None and view.leader.lapse == 0
    clock.now, store.delay = 0.9, 0.2
    await election.refresh()
    assert election.lease is not None and election.deadline == 1.9
