"""Authenticated liveness probes of every VIP owner and of the leading controller: lease
liveness is not enough.

etcd does not authorise `LeaseKeepAlive`: any client that can reach etcd can keep any
lease alive, so a stolen agent key could keep a dead node's lease, and with it its VIPs,
alive forever, and the dead leading controller's election lease with it, so that no
standby ever leads. Every controller, standbys too, therefore asks each VIP owner's peer
endpoint (`agent.peer`) and the leader's (`controller.peer`) over mutual TLS to echo a
fresh nonce, which only a server holding that certificate's key can do.

A target that has failed every probe for `timing.probe_limit` (two keepalive periods, and
at least `MIN_MISSES` in a row: one lost probe or a short stall moves nothing) is overdue:

* an overdue owner whose lease still reads a second or more left (someone refreshed it
  within the last second although the node has not answered for longer) gets its lease
  revoked, by the leader, or by a standby while the leader is overdue too (the leader died
  with the node, or is cut off from it). The revoke writes a `revoked/` marker first, and
  whoever assigns the owner's VIPs waits the fence deadline from when it first saw the
  lease gone (`controller.embargo`). An owner that simply died is left to the lease expiry
  path (`controller.expiry`), which needs no embargo. An owner that has not answered yet
  under its current lease is probed like any other.
* an overdue leader is deposed by a standby: its election lease revoked (its leader key
  goes with it), so the standby wins the next campaign at once. A deposed leader completes
  no assignment: every write it makes compares its leader key's create revision. A standby
  deposes at most once per `DEPOSE_EVERY`, so one cut off from a healthy leader costs a
  leadership change a minute, each logged, never a stream of them.

A false verdict costs a move or a leadership change, never two owners. A controller back
from a partition probes afresh before it judges (`Verdicts.trusted_from`). Probes write
nothing to etcd; a revoke writes the marker (one put, one expiry).
"""

from __future__ import annotations

import asyncio
import math
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import structlog

from controller.expiry import lapse_of
from controller.revoke import revoke_marked
from haproxy_py.cluster.peerlink import PeerClient, PeerError
from haproxy_py.cluster.records import ClusterView
from haproxy_py.cluster.store import StoreError
from haproxy_py.cluster.storeapi import KVStore
from haproxy_py.cluster.timing import Timing, fence_deadline, lapse_proven, probe_limit

log = structlog.get_logger(__name__)

MIN_MISSES = 3
DEPOSE_EVERY = 60.0  # seconds between two depositions by one controller


@dataclass
class Verdicts:
    """Consecutive probe failures per target, by the time each probe was sent (pure: no I/O,
    no clock). Rounds overlap, so results may arrive out of order: a failure of a probe sent
    before the last success counts for nothing.

    Failures count only from `trusted_from` (monotonic): while this controller cannot reach
    etcd (inf) it is likely cut off from the targets too, and what its probes found then says
    more about it than about them; so a target is overdue only after failing for `limit`
    since etcd came back, not at once when a controller returns from a partition."""

    limit: float
    failing: dict[str, tuple[float, int]] = field(default_factory=dict)  # since, misses
    answered: dict[str, float] = field(default_factory=dict)  # send time of the last success
    trusted_from: float = -math.inf

    def result(self, target: str, ok: bool, sent: float) -> None:
        if ok:
            self.answered[target] = max(sent, self.answered.get(target, sent))
            self.failing.pop(target, None)
            return
        if sent <= self.answered.get(target, -math.inf):
            return
        since, misses = self.failing.get(target, (sent, 0))
        self.failing[target] = (min(since, sent), misses + 1)

    def overdue(self, target: str, now: float) -> bool:
        since, misses = self.failing.get(target, (now, 0))
        return misses >= MIN_MISSES and now - max(since, self.trusted_from) >= self.limit

    def keep(self, targets: set[str]) -> None:
        self.failing = {n: v for n, v in self.failing.items() if n in targets}
        self.answered = {n: v for n, v in self.answered.items() if n in targets}


@dataclass(frozen=True)
class Target:
    """One probed process: the certificate name it must answer with, where, and its lease."""

    name: str  # agent-<node> or controller-<name>
    address: str
    port: int
    lease: int
    node: str = ""  # a VIP owner's node ("" for the leader)


def targets(view: ClusterView, agent_port: int, own_lease: int | None) -> list[Target]:
    """The VIP owners with a registered address, and the leader unless it is us."""
    out = []
    owners = {a.node: a.lease for a in view.vips.values() if a.lease}
    for node, lease in sorted(owners.items()):
        record = view.nodes.get(node)
        if record is not None and record.address is not None and record.lease == lease:
            out.append(Target(f"agent-{node}", record.address, agent_port, lease, node))
    leader = view.leader
    if leader is not None and leader.peer is not None and leader.lease not in (0, own_lease):
        peer = leader.peer
        out.append(Target(peer.name, peer.address, peer.port, leader.lease))
    return out


@dataclass
class Plan:
    """What one round's verdicts call for (pure)."""

    revoke: list[Target]
    depose: Target | None


def plan(found: list[Target], verdicts: Verdicts, now: float, leading: bool) -> Plan:
    """Owners overdue are revoked by the leader, or by a standby that finds the leader
    overdue too; an overdue leader is deposed by a standby."""
    overdue = [t for t in found if verdicts.overdue(t.name, now)]
    leader = next((t for t in overdue if not t.node), None)
    owners = [t for t in overdue if t.node] if leading or leader is not None else []
    return Plan(owners, None if leading else leader)


class Prober:
    """Probes the owners and the leader every keepalive period; revokes and deposes by
    `plan`."""

    def __init__(
        self, store: KVStore, client: PeerClient, port: int, timing: Timing, identity: str = ""
    ) -> None:
        self.store = store
        self.client = client
        self.port = port
        self.timing = timing
        self.identity = identity
        self.verdicts = Verdicts(probe_limit(timing))
        self.view: ClusterView | None = None  # the last one the controller read
        self.wake: Callable[[], None] = lambda: None
        self.deposed: Callable[[], None] = lambda: None  # counts a deposition (metrics)
        self.deposed_at = -math.inf  # monotonic time of this controller's last deposition
        self.depositions = 0
        self._busy: set[int] = set()  # leases an overlapping round is revoking

    async def run(
        self, leading: Callable[[], bool], own_lease: Callable[[], int | None] = lambda: None
    ) -> None:
        """A round every keepalive period, each probe sent at once: a round waiting for a
        target that does not answer (a probe times out after the keepalive timeout) would
        otherwise stretch the probe period, and the revoke with it."""
        rounds: set[asyncio.Task[None]] = set()
        try:
            while True:
                await asyncio.sleep(self.timing.keepalive_interval)
                if self.view is not None:
                    found = targets(self.view, self.port, own_lease())
                    task = asyncio.create_task(self._round(found, leading))
                    rounds.add(task)
                    task.add_done_callback(rounds.discard)
        finally:
            for task in rounds:
                task.cancel()

    async def _round(self, found: list[Target], leading: Callable[[], bool]) -> None:
        sent = time.monotonic()
        results = await asyncio.gather(*(self._probe(t) for t in found))
        self.verdicts.keep({t.name for t in found})
        for target, ok in zip(found, results, strict=True):
            self.verdicts.result(target.name, ok, sent)
        todo = plan(found, self.verdicts, time.monotonic(), leading())
        acts = [self._revoke(t) for t in todo.revoke]
        if todo.depose is not None:
            acts.append(self._depose(todo.depose))
        await asyncio.gather(*acts)

    async def _probe(self, target: Target) -> bool:
        nonce = secrets.token_hex(16)
        try:
            answer = await self.client.post(
                target.address, target.port, target.name, "/alive", {"nonce": nonce}
            )
        except PeerError as exc:
            log.debug("probe failed", target=target.name, error=str(exc))
            return False
        return isinstance(answer, dict) and answer.get("nonce") == nonce

    async def _revoke(self, target: Target) -> None:
        if target.lease in self._busy:
            return
        self._busy.add(target.lease)
        asked = time.monotonic()
        try:
            left, granted = await self.store.lease_time_to_live(target.lease)
            if left < 1 or target.name not in self.verdicts.failing:
                return  # running out by itself (the expiry path), or it answered meanwhile
            since, misses = self.verdicts.failing[target.name]
            lapse = lapse_of(self.view, target.node, target.lease) if self.view else 0
            if lapse_proven(lapse, granted) and asked - since < granted - 1:
                # An owner that lapses may just have died: its lease reads 0 within a second
                # and the expiry path then moves its VIPs with no embargo. Read >= 1 once it
                # has failed for granted - 1 s, it was renewed after the failures began.
                return
            wait = fence_deadline(self.timing)
            if not await revoke_marked(self.store, target.lease, wait, target.name, self.identity):
                return
        except StoreError as exc:
            log.error("cannot revoke the lease of an owner that fails its probes", error=str(exc))
            return
        finally:
            self._busy.discard(target.lease)
        self.verdicts.failing.pop(target.name, None)
        log.warning(
            "VIP owner failed its authenticated probe while its lease was kept alive: lease "
            "revoked; its VIPs move once its fence has fallen",
            node=target.node,
            lease=f"{target.lease:x}",
            failing_s=round(time.monotonic() - since, 3),
            misses=misses,
        )
        self.wake()

    async def _depose(self, target: Target) -> None:
        now = time.monotonic()
        if target.lease in self._busy or now - self.deposed_at < DEPOSE_EVERY:
            return
        self._busy.add(target.lease)
        since, misses = self.verdicts.failing[target.name]
        try:
            await self.store.revoke(target.lease)  # no VIP hangs on it: no marker needed
        except StoreError as exc:
            log.error("cannot depose a leader that fails its probes", error=str(exc))
            return
        finally:
            self._busy.discard(target.lease)
        self.deposed_at = now
        self.depositions += 1
        self.deposed()
        self.verdicts.failing.pop(target.name, None)
        log.warning(
            "leading controller failed its authenticated probe: its election lease revoked "
            f"(this controller deposes at most once every {DEPOSE_EVERY:g} s)",
            leader=target.name,
            lease=f"{target.lease:x}",
            failing_s=round(now - since, 3),
            misses=misses,
            depositions=self.depositions,
        )
        self.wake()
