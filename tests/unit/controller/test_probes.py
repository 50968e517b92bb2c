"""The probe verdicts (`controller.probes`): one lost probe never counts; a run of misses
longer than the limit does; who revokes an overdue owner and who deposes an overdue leader."""

from __future__ import annotations

import asyncio
import contextlib

from controller.probes import DEPOSE_EVERY, MIN_MISSES, Prober, Target, Verdicts, plan
from haproxy_py.cluster.controlkeys import PeerAddress
from haproxy_py.cluster.memstore import MemoryStore
from haproxy_py.cluster.peerlink import PeerError
from haproxy_py.cluster.records import ControllerLeader, NodeRecord, VipAssignment
from haproxy_py.cluster.store import LeaseLost
from haproxy_py.cluster.timing import Timing, fence_deadline, probe_limit

TIMING = Timing(lease_ttl=2, keepalive_interval=0.25, address_lifetime=1.0, fence_margin=0.2)
LIMIT = probe_limit(TIMING)


def test_one_lost_probe_is_not_a_verdict() -> None:
    v = Verdicts(LIMIT)
    v.result("n2", False, 0.0)
    v.result("n2", True, 0.25)
    assert not v.overdue("n2", 10.0)


def test_misses_for_longer_than_the_limit_are() -> None:
    v = Verdicts(LIMIT)
    t = 0.0
    while t < LIMIT:
        v.result("n2", False, t)
        assert not v.overdue("n2", t)
        t += 0.25
    v.result("n2", False, t)
    assert v.overdue("n2", t)


def test_few_misses_over_a_long_stall_are_not() -> None:
    v = Verdicts(LIMIT)
    v.result("n2", False, 0.0)
    v.result("n2", False, 5.0)  # the controller itself stalled between its probes
    assert MIN_MISSES > 2 and not v.overdue("n2", 5.0)


def test_a_late_failure_of_a_probe_sent_before_a_success_counts_for_nothing() -> None:
    """Rounds overlap: a probe that timed out may be reported after a later one answered."""
    v = Verdicts(LIMIT)
    v.result("n2", True, 0.5)
    for sent in (0.0, 0.25, 0.5):
        v.result("n2", False, sent)
    assert v.failing == {} and not v.overdue("n2", 10.0)


def test_misses_count_from_the_send_of_the_first() -> None:
    """An owner that swallows probes (each fails only at its timeout) is overdue once three
    probes sent `limit` apart have failed, not `limit` after the first timeout."""
    v = Verdicts(LIMIT)
    for sent in (0.0, 0.25, 0.5):
        v.result("n2", False, sent)
    assert v.overdue("n2", 0.5 + 0.5)  # the third times out 0.5 s after it was sent


def test_misses_while_etcd_was_out_of_reach_count_only_from_its_return() -> None:
    """A controller cut off from etcd and peers alike fails every probe; back, it must see
    the owner fail for `limit` again before it revokes (the owner answers by then)."""
    v = Verdicts(LIMIT)
    for sent in (0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0):
        v.result("n2", False, sent)
    assert v.overdue("n2", 2.0)
    v.trusted_from = float("inf")  # etcd out of reach
    assert not v.overdue("n2", 10.0)
    v.trusted_from = 10.0  # back
    v.result("n2", False, 10.0)
    assert not v.overdue("n2", 10.0)
    assert v.overdue("n2", 10.0 + LIMIT)


def test_forgetting_nodes_that_own_nothing() -> None:
    v = Verdicts(LIMIT)
    v.result("n2", False, 0.0)
    v.keep({"n1"})
    assert v.failing == {}


# --- who acts on an overdue target (pure) ---------------------------------------------------

OWNER = Target("agent-n2", "198.18.0.22", 9734, 7, "n2")
LEADER = Target("controller-n2", "198.18.0.22", 9735, 9)


def overdue(*names: str) -> Verdicts:
    v = Verdicts(LIMIT)
    for name in names:
        for sent in (0.0, 0.25, 0.5):
            v.result(name, False, sent)
    return v


def test_the_leader_revokes_an_overdue_owner() -> None:
    p = plan([OWNER], overdue("agent-n2"), 1.0, leading=True)
    assert (p.revoke, p.depose) == ([OWNER], None)


def test_a_standby_leaves_an_overdue_owner_to_a_leader_that_answers() -> None:
    p = plan([OWNER, LEADER], overdue("agent-n2"), 1.0, leading=False)
    assert (p.revoke, p.depose) == ([], None)


def test_a_standby_revokes_the_owner_and_deposes_the_leader_when_both_are_overdue() -> None:
    p = plan([OWNER, LEADER], overdue("agent-n2", "controller-n2"), 1.0, leading=False)
    assert (p.revoke, p.depose) == ([OWNER], LEADER)


def test_an_overdue_leader_alone_is_deposed_and_no_owner_touched() -> None:
    p = plan([OWNER, LEADER], overdue("controller-n2"), 1.0, leading=False)
    assert (p.revoke, p.depose) == ([], LEADER)


# --- the prober on the memory store, against a fake peer client ----------------------------

FAST = Timing(
    lease_ttl=1,
    keepalive_interval=0.02,
    address_lifetime=0.3,
    fence_margin=0.1,
    etcd_election_timeout=0.5,
)


class FakeClient:
    """Answers for every name not in `down`; a down target swallows the probe `hang` s (a
    timeout), or refuses at once."""

    def __init__(self, hang: float = 0.0) -> None:
        self.down: set[str] = set()
        self.hang = hang

    async def post(self, address: str, port: int, expected: str, path: str, body: dict) -> object:
        if expected in self.down:
            await asyncio.sleep(self.hang)
            raise PeerError("no answer")
        return {"nonce": body["nonce"]}


async def cluster(store: MemoryStore, ttl: int = 30, lapse: int = 0) -> tuple[int, int]:
    """n2 owns a VIP and leads; both leases `ttl` s (kept alive by a stolen key, say)."""
    owner, leader = (await store.grant_lease(ttl)).id, (await store.grant_lease(ttl)).id
    s = store.schema
    record = NodeRecord("n2", address="198.18.0.22", lapse=lapse)
    await store.put(s.node("n2"), record.to_json(), owner)
    vip = VipAssignment("198.18.0.10", "n2", 1, 0.0, lease=owner)
    await store.put(s.vip("198.18.0.10"), vip.to_json())
    peer = PeerAddress("198.18.0.22", 9735, "controller-n2")
    await store.put(s.leader, ControllerLeader("n2", 0.0, peer=peer).to_json(), leader)
    return owner, leader


async def run_prober(
    store: MemoryStore, client: FakeClient, leading: bool, down: set[str], wait: float = 0.0
) -> Prober:
    prober = Prober(store, client, 9734, FAST, "n1")
    prober.view = await store.read_view()
    task = asyncio.create_task(prober.run(lambda: leading))
    await asyncio.sleep(0.1)
    client.down = down
    await asyncio.sleep(probe_limit(FAST) + wait + 0.3)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    return prober


async def test_an_overdue_owner_kept_alive_is_revoked_after_its_marker() -> None:
    store = MemoryStore()
    owner, leader = await cluster(store)
    await run_prober(store, FakeClient(), True, {"agent-n2"})
    after = await store.read_view()
    assert await store.lease_remaining(owner) < 0 and await store.lease_remaining(leader) > 0
    assert after.revoked == {owner: fence_deadline(FAST)}
    assert "n2" not in after.nodes


async def keep_alive(store: MemoryStore, lease: int) -> None:
    """A stolen key renewing `lease` until it is revoked."""
    with contextlib.suppress(LeaseLost):
        while True:
            await store.keepalive(lease)
            await asyncio.sleep(0.2)


async def test_a_lapsing_owner_is_left_to_its_lapse_for_its_first_second() -> None:
    """It may just have died (its lease reads 0 within a second, then it moves with no
    embargo); still read >= 1 after a second of failures (granted 2 - 1), it was renewed
    since they began: revoked."""
    for wait, revoked in ((0.0, False), (1.2, True)):
        store = MemoryStore()
        owner, _ = await cluster(store, ttl=2, lapse=1)
        stolen = asyncio.create_task(keep_alive(store, owner))
        try:
            await run_prober(store, FakeClient(), True, {"agent-n2"}, wait=wait)
        finally:
            stolen.cancel()
        assert (owner in (await store.read_view()).revoked) is revoked, wait


async def test_probes_that_hang_do_not_slow_the_rounds() -> None:
    """Each probe to the gone owner waits 10 probe periods before failing; rounds overlap, so
    three misses still land within the limit plus one such wait."""
    store = MemoryStore()
    owner, _ = await cluster(store)
    hang = 10 * FAST.keepalive_interval
    await run_prober(store, FakeClient(hang), True, {"agent-n2"}, wait=hang)
    assert await store.lease_remaining(owner) < 0


async def test_a_lease_running_out_by_itself_is_left_to_the_expiry_path() -> None:
    store = MemoryStore()
    await cluster(store, ttl=1)  # reads 0 s left: ending by itself
    await run_prober(store, FakeClient(), True, {"agent-n2"})
    assert (await store.read_view()).revoked == {}


async def test_an_owner_that_never_answered_is_probed_like_any_other() -> None:
    """#22 (c): an owner killed right after registering again is not left to its lease."""
    store = MemoryStore()
    owner, _ = await cluster(store)
    client = FakeClient()
    client.down = {"agent-n2"}  # from the first probe on
    await run_prober(store, client, True, {"agent-n2"})
    assert await store.lease_remaining(owner) < 0


async def test_a_standby_leaves_the_owner_to_a_leader_that_answers() -> None:
    store = MemoryStore()
    owner, leader = await cluster(store)
    await run_prober(store, FakeClient(), False, {"agent-n2"})
    assert await store.lease_remaining(owner) > 0 and await store.lease_remaining(leader) > 0


async def test_a_standby_deposes_a_dead_leader_and_revokes_its_owner() -> None:
    """The leader died with the node, both leases kept alive by a stolen key."""
    store = MemoryStore()
    owner, leader = await cluster(store)
    prober = await run_prober(store, FakeClient(), False, {"agent-n2", "controller-n2"})
    after = await store.read_view()
    assert after.leader is None and after.revoked == {owner: fence_deadline(FAST)}
    assert await store.lease_remaining(leader) < 0 and await store.lease_remaining(owner) < 0
    assert prober.depositions == 1


async def test_a_standby_deposes_at_most_once_per_period() -> None:
    """A standby cut off from a healthy leader must not depose leader after leader."""
    store = MemoryStore()
    await cluster(store)
    client = FakeClient()
    prober = await run_prober(store, client, False, {"controller-n2"})
    assert prober.depositions == 1
    again = (await store.grant_lease(30)).id
    peer = PeerAddress("198.18.0.22", 9735, "controller-n2")
    record = ControllerLeader("n2", 0.0, peer=peer).to_json()
    await store.put(store.schema.leader, record, again)
    prober.view = await store.read_view()
    task = asyncio.create_task(prober.run(lambda: False))
    await asyncio.sleep(probe_limit(FAST) + 0.3)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert prober.depositions == 1 and await store.lease_remaining(again) > 0
    assert DEPOSE_EVERY >= 60
