"""The leader's authenticated liveness probe of every VIP owner: lease liveness is not enough.

etcd does not authorise `LeaseKeepAlive`: any client that can reach etcd can keep any
lease alive, so a stolen agent key could keep a dead node's lease, and with it its VIPs,
alive forever. The controllers therefore also ask each VIP owner's peer endpoint
(`agent.peer`, mutual TLS with the controller's certificate) to echo a fresh nonce, which
only a server holding that node's key can do.

An owner that answered under its current lease and has since failed every probe for
`timing.probe_limit` (two keepalive periods, and at least `MIN_MISSES` in a row: one lost
probe or a short stall moves nothing) while its lease still reads a second or more left
(someone refreshed it within the last second, although the node has not answered for
longer) gets its lease revoked. Every keepalive etcd renewed was sent before the revoke,
and the agent arms a fence only within `rearm_window` of such a send, so its fence falls
within `fence_deadline` (rearm_window + address_lifetime + kernel slack: 1.3 s by default)
of the revoke's answer, whether the node is dead or alive and cut off from the controllers
only; its VIPs are kept from every other node until then (`guard`). An owner that simply
died is left to the lease expiry path (`controller.expiry`), which is faster. An owner that
never answered (no peer endpoint, or a controller that started leading after it died) is
left to its lease, so a misconfigured node is never moved. Probes write nothing to etcd.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import structlog

from controller.expiry import lapse_of
from haproxy_py.cluster.peerlink import PeerClient, PeerError
from haproxy_py.cluster.records import ClusterView
from haproxy_py.cluster.store import StoreError
from haproxy_py.cluster.storeapi import KVStore
from haproxy_py.cluster.timing import Timing, fence_deadline, lapse_proven, probe_limit

log = structlog.get_logger(__name__)

MIN_MISSES = 3


@dataclass
class Verdicts:
    """Consecutive probe failures per node, by the time each probe was sent (pure: no I/O,
    no clock). Rounds overlap, so results may arrive out of order: a failure of a probe sent
    before the last success counts for nothing."""

    limit: float
    failing: dict[str, tuple[float, int]] = field(default_factory=dict)  # since, misses
    answered: dict[str, float] = field(default_factory=dict)  # send time of the last success

    def result(self, node: str, ok: bool, sent: float) -> None:
        if ok:
            self.answered[node] = max(sent, self.answered.get(node, sent))
            self.failing.pop(node, None)
            return
        if sent <= self.answered.get(node, -math.inf):
            return
        since, misses = self.failing.get(node, (sent, 0))
        self.failing[node] = (min(since, sent), misses + 1)

    def overdue(self, node: str, now: float) -> bool:
        since, misses = self.failing.get(node, (now, 0))
        return misses >= MIN_MISSES and now - since >= self.limit

    def keep(self, nodes: set[str]) -> None:
        self.failing = {n: v for n, v in self.failing.items() if n in nodes}
        self.answered = {n: v for n, v in self.answered.items() if n in nodes}


class Prober:
    """Probes VIP owners (standbys too, so a new leader starts with their history); while
    leading, revokes a lease kept alive without its node and keeps that node's VIPs
    unassigned until its fence has fallen."""

    def __init__(self, store: KVStore, client: PeerClient, port: int, timing: Timing) -> None:
        self.store = store
        self.client = client
        self.port = port
        self.timing = timing
        self.verdicts = Verdicts(probe_limit(timing))
        self.view: ClusterView | None = None  # the last one the controller read
        self.embargo: dict[str, float] = {}  # vip -> monotonic time it may be assigned again
        self.wake: Callable[[], None] = lambda: None
        self.answered: set[int] = set()  # owner leases whose node has answered a probe
        self._warned: set[str] = set()
        self._revoking: set[str] = set()

    def embargo_left(self, now: float) -> float:
        """How long the longest embargo still runs (0: none)."""
        return max((until - now for until in self.embargo.values()), default=0.0)

    def guard(self, view: ClusterView, now: float) -> ClusterView:
        """The view with embargoed VIPs marked occupied, so nothing assigns them yet."""
        self.embargo = {v: until for v, until in self.embargo.items() if until > now}
        if not self.embargo:
            return view
        return dataclasses.replace(view, occupied=view.occupied | frozenset(self.embargo))

    async def run(
        self, leading: Callable[[], bool], lease_left: Callable[[], float] = lambda: math.inf
    ) -> None:
        """A round every keepalive period, each probe sent at once: a round waiting for an
        owner that does not answer (a probe times out after the keepalive timeout) would
        otherwise stretch the probe period, and the revoke with it.

        The embargo lives in this process only, so a revoke waits until this controller's own
        lease (`lease_left`) outlasts it: no other controller can lead, and assign the VIPs,
        before the embargo ends (and the loop waits it out before resigning)."""
        rounds: set[asyncio.Task[None]] = set()
        try:
            while True:
                await asyncio.sleep(self.timing.keepalive_interval)
                if self.view is not None:
                    task = asyncio.create_task(self._round(self.view, leading, lease_left))
                    rounds.add(task)
                    task.add_done_callback(rounds.discard)
        finally:
            for task in rounds:
                task.cancel()

    async def _round(
        self, view: ClusterView, leading: Callable[[], bool], lease_left: Callable[[], float]
    ) -> None:
        sent = time.monotonic()
        owners = {a.node: a.lease for a in view.vips.values() if a.lease}
        self.verdicts.keep(set(owners))
        names = sorted(owners)
        results = await asyncio.gather(*(self._probe(view, n) for n in names))
        for node, ok in zip(names, results, strict=True):
            self.verdicts.result(node, ok, sent)
            if ok:
                self.answered.add(owners[node])
            elif owners[node] not in self.answered:
                self._unprovable(node)
            elif (
                self.verdicts.overdue(node, time.monotonic())
                and leading()
                and lease_left() >= fence_deadline(self.timing)
                and node not in self._revoking  # (an overlapping round is at it)
            ):
                self._revoking.add(node)
                try:
                    await self._revoke(view, node, owners[node])
                finally:
                    self._revoking.discard(node)
        self.answered &= {a.lease for a in (self.view or view).vips.values() if a.lease}

    def _unprovable(self, node: str) -> None:
        """An owner whose endpoint never answered under its current lease (no peer endpoint
        configured, an older version, or it died before this controller led) is left to its
        lease: revoking it could move VIPs off a healthy node."""
        if node not in self._warned:
            self._warned.add(node)
            log.warning("VIP owner has not answered a probe yet; its lease alone counts", node=node)

    async def _probe(self, view: ClusterView, node: str) -> bool:
        record = view.nodes.get(node)
        if record is None or record.address is None:
            return True  # no record: its lease is gone, the expiry path moves its VIPs
        nonce = secrets.token_hex(16)
        try:
            answer = await self.client.post(
                record.address, self.port, f"agent-{node}", "/alive", {"nonce": nonce}
            )
        except PeerError as exc:
            log.debug("owner probe failed", node=node, error=str(exc))
            return False
        return answer == {"nonce": nonce, "node": node}

    async def _revoke(self, view: ClusterView, node: str, lease: int) -> None:
        asked = time.monotonic()
        try:
            left, granted = await self.store.lease_time_to_live(lease)
        except StoreError:
            return
        if left < 1:
            return  # running out by itself: the expiry path is faster and needs no revoke
        if node not in self.verdicts.failing:
            return  # it answered a probe meanwhile
        since, misses = self.verdicts.failing[node]
        if lapse_proven(lapse_of(view, node, lease), granted) and asked - since < granted - 1:
            # An owner that lapses may just have died: its lease reads 0 within a second and
            # the expiry path then moves its VIPs with no embargo. Read >= 1 once it has failed
            # for granted - 1 s, it was renewed after the failures began: revoked.
            return
        try:
            await self.store.revoke(lease)
        except StoreError as exc:
            log.error("cannot revoke the lease of an owner that fails its probes", error=str(exc))
            return
        wait = fence_deadline(self.timing)
        until = time.monotonic() + wait
        for vip in view.vips_of(node):
            self.embargo[vip] = until
        asyncio.get_running_loop().call_later(wait + 0.01, self.wake)  # decide again then
        self.verdicts.failing.pop(node, None)
        log.warning(
            "VIP owner failed its authenticated probe while its lease was kept alive: lease "
            "revoked; its VIPs move once its fence has fallen",
            node=node,
            lease=f"{lease:x}",
            failing_s=round(time.monotonic() - since, 3),
            misses=misses,
            vips=list(view.vips_of(node)),
            embargo_s=round(wait, 3),
        )
        self.wake()
