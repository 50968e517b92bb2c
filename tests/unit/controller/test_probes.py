"""The owners' probe verdicts (`controller.probes`): one lost probe never counts; a run of
misses longer than the limit does; the guard keeps embargoed VIPs from being assigned."""

from __future__ import annotations

import asyncio
import contextlib

from controller.probes import MIN_MISSES, Prober, Verdicts
from haproxy_py.cluster.peerlink import PeerError
from haproxy_py.cluster.records import ClusterView, NodeRecord, VipAssignment
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


def test_forgetting_nodes_that_own_nothing() -> None:
    v = Verdicts(LIMIT)
    v.result("n2", False, 0.0)
    v.keep({"n1"})
    assert v.failing == {}


def test_guard_marks_embargoed_vips_occupied_until_the_fence_fell() -> None:
    prober = Prober(None, None, 9734, TIMING)
    prober.embargo = {"198.18.0.10": 5.0}
    view = ClusterView("c", 1)
    assert "198.18.0.10" in prober.guard(view, 4.9).occupied
    assert prober.guard(view, 5.0).occupied == frozenset()


# --- the prober against fakes: when it revokes, and when it must not ------------------------

FAST = Timing(
    lease_ttl=1,
    keepalive_interval=0.02,
    address_lifetime=0.3,
    fence_margin=0.1,
    etcd_election_timeout=0.5,
)


class FakeStore:
    def __init__(self, ttl: int) -> None:
        self.ttl = ttl
        self.revoked: list[int] = []

    async def lease_time_to_live(self, lease: int) -> tuple[int, int]:
        return self.ttl, 2

    async def revoke(self, lease: int) -> None:
        self.revoked.append(lease)
        self.ttl = -1  # etcd: gone


class FakeClient:
    def __init__(self, hang: float = 0.0) -> None:
        self.up = True
        self.hang = hang  # a down owner swallows probes this long (a timeout), else refuses

    async def post(self, address: str, port: int, expected: str, path: str, body: dict) -> object:
        if not self.up:
            await asyncio.sleep(self.hang)
            raise PeerError("no answer")
        return {"nonce": body["nonce"], "node": expected.removeprefix("agent-")}


def owned_by_n2(lapse: int = 0) -> ClusterView:
    return ClusterView(
        "c",
        1,
        nodes={"n2": NodeRecord("n2", address="198.18.0.22", lease=7, lapse=lapse)},
        vips={"198.18.0.10": VipAssignment("198.18.0.10", "n2", 1, 0.0, lease=7)},
    )


async def run_prober(
    ttl: int,
    answered_first: bool,
    leading: bool = True,
    hang: float = 0.0,
    lease_left: float = 10.0,
    lapse: int = 0,
    wait: float = 0.3,
) -> tuple[FakeStore, Prober]:
    store, client = FakeStore(ttl), FakeClient(hang)
    prober = Prober(store, client, 9734, FAST)
    prober.view = owned_by_n2(lapse)
    client.up = answered_first
    task = asyncio.create_task(prober.run(lambda: leading, lambda: lease_left))
    await asyncio.sleep(0.1)
    client.up = False  # the node is gone; its lease is kept alive (ttl) or runs out (0)
    await asyncio.sleep(probe_limit(FAST) + hang + wait)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    return store, prober


async def test_an_owner_gone_while_its_lease_is_kept_alive_is_revoked_and_embargoed() -> None:
    store, prober = await run_prober(ttl=1, answered_first=True)
    assert store.revoked == [7]
    assert set(prober.embargo) == {"198.18.0.10"}


async def test_a_lapsing_owner_is_left_to_its_lapse_for_its_first_second() -> None:
    """It may just have died (its lease reads 0 within a second, then it moves with no
    embargo); still read >= 1 after a second of failures (granted 2 - 1), it was renewed
    since they began: revoked."""
    store, _ = await run_prober(ttl=1, answered_first=True, lapse=1)
    assert store.revoked == []
    store, _ = await run_prober(ttl=1, answered_first=True, lapse=1, wait=1.2)
    assert store.revoked == [7]


async def test_probes_that_hang_do_not_slow_the_rounds() -> None:
    """Each probe to the gone owner waits 10 probe periods before failing; rounds overlap, so
    three misses still land within the limit plus one such wait."""
    store, _ = await run_prober(ttl=1, answered_first=True, hang=10 * FAST.keepalive_interval)
    assert store.revoked == [7]


async def test_a_leader_whose_own_lease_ends_before_the_embargo_does_not_revoke() -> None:
    """Its embargo would die with it while a successor could already assign the VIPs."""
    store, _ = await run_prober(ttl=1, answered_first=True, lease_left=fence_deadline(FAST) - 0.01)
    assert store.revoked == []


def test_the_embargo_left_is_the_longest_one() -> None:
    prober = Prober(FakeStore(0), FakeClient(), 9734, TIMING)
    assert prober.embargo_left(1.0) == 0.0
    prober.embargo = {"198.18.0.10": 5.0, "198.18.0.11": 3.0}
    assert prober.embargo_left(1.0) == 4.0


async def test_a_lease_running_out_by_itself_is_left_to_the_expiry_path() -> None:
    store, _ = await run_prober(ttl=0, answered_first=True)
    assert store.revoked == []


async def test_an_owner_that_never_answered_is_never_revoked() -> None:
    store, _ = await run_prober(ttl=1, answered_first=False)
    assert store.revoked == []


async def test_a_standby_probes_but_does_not_revoke() -> None:
    store, prober = await run_prober(ttl=1, answered_first=True, leading=False)
    assert store.revoked == [] and prober.answered == {7}
