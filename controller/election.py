"""Leader election through `controller/leader`, a key bound to this controller's lease.

Campaign = create-if-absent of the leader key under our lease. We lead while
that key (identified by its create revision) exists under our lease; it dies
with our lease, so a crashed leader is replaced within the lease TTL. A
leader key with no lease (a hand edit, or a put that dropped the lease) would
never die: it counts as no leader, and a campaign first deletes it (compare on
its mod revision), so the election heals itself within one cycle. Every write the leader
makes compares that create revision, so a deposed leader's late writes fail.
Stepping down deletes the key and revokes the lease, so a standby takes over
at once instead of waiting out the TTL. A standby may also revoke our lease when we fail
its authenticated probes (`controller.probes`): that is the same as losing it. With
`lapse` the lease is granted a second longer than `ttl` and counted as `ttl` only: a
keepalive answered after that gives the lease up, so a standby may revoke it on its first
0 s reading (`controller.expiry`).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

import structlog

from haproxy_py.cluster.controlkeys import PeerAddress
from haproxy_py.cluster.records import ClusterView, ControllerLeader
from haproxy_py.cluster.storeapi import Compare, Delete, KVStore, created_at, mod_revision_is
from haproxy_py.cluster.storeerrors import LeaseLost, StoreError, StoreUnavailable

log = structlog.get_logger(__name__)


class Election:
    """This controller's lease and leadership; `revision` is set while we lead."""

    def __init__(
        self,
        store: KVStore,
        identity: str,
        ttl: int,
        keepalive_interval: float,
        metrics_url: str | None = None,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        lapse: bool = False,
    ) -> None:
        self.store = store
        self.lapse = lapse
        self.identity = identity
        self.ttl = ttl
        self.keepalive_interval = keepalive_interval
        self.metrics_url = metrics_url
        self.clock = clock  # wall time, for the record's `since`
        self.monotonic = monotonic  # lease deadlines
        self.lease: int | None = None
        self.revision: int | None = None  # create revision of our leader key
        self.deadline = 0.0  # monotonic time our lease surely lasts until
        self.last_keepalive_latency = 0.0
        self.on_change: Callable[[bool], None] = lambda leading: None
        self.peer: PeerAddress | None = None  # where the standbys probe us (`controller.peer`)

    @property
    def key(self) -> str:
        return self.store.schema.leader

    def leading(self, view: ClusterView) -> bool:
        """Still leader per this view and per our own lease deadline."""
        if self.revision is None and not self._adopt(view):
            return False
        mine = (
            view.leader is not None
            and view.leader.create_revision == self.revision
            and view.leader.lease == self.lease
        )
        if not mine or self.monotonic() >= self.deadline:
            self._lose(
                "the leader key is gone or not ours" if not mine else "lease deadline passed"
            )
            return False
        return True

    def _adopt(self, view: ClusterView) -> bool:
        """Our leader key outlived a local loss (etcd came back before the lease ran out)."""
        leader = view.leader
        if leader is None or self.lease is None or leader.lease != self.lease:
            return False
        if self.monotonic() >= self.deadline:
            return False
        self.revision = leader.create_revision
        log.info("leading again", controller=self.identity)
        self.on_change(True)
        return True

    def fence(self) -> list[Compare]:
        """The compare that makes a write valid only while we lead."""
        assert self.revision is not None
        return [created_at(self.key, self.revision)]

    async def _ensure_lease(self) -> int:
        if self.lease is None:
            sent = self.monotonic()
            granted = await self.store.grant_lease(self.ttl + 1 if self.lapse else self.ttl)
            self.lease = granted.id
            self.deadline = sent + self._counted(granted.ttl)
        return self.lease

    async def campaign(self, stale: ControllerLeader | None = None) -> bool:
        """Try to become leader (only wins if the key is absent, or is `stale`: no lease)."""
        if stale is not None:
            assert stale.lease == 0
            gone = await self.store.txn(
                [mod_revision_is(self.key, stale.mod_revision)], [Delete(self.key)]
            )
            if gone:
                log.error("leader key without a lease removed", stale_leader=stale.id)
        lease = await self._ensure_lease()
        record = ControllerLeader(
            self.identity,
            self.clock(),
            self.metrics_url,
            self.peer,
            lapse=self.ttl if self.lapse else 0,
        )
        if not await self.store.create(self.key, record.to_json(), lease):
            return False
        kv = await self.store.get(self.key)
        if kv is None or kv.lease != lease:
            return False  # expired already; try again next cycle
        self.revision = kv.create_revision
        log.info("became leader", controller=self.identity, lease=f"{lease:x}")
        self.on_change(True)
        return True

    def _lose(self, why: str) -> None:
        if self.revision is not None:
            self.revision = None
            log.warning("lost leadership", controller=self.identity, reason=why)
            self.on_change(False)

    async def keep_alive(self, stopping: asyncio.Event) -> None:
        """Refresh our lease every interval; a lost lease means a new lease and no leadership."""
        while not stopping.is_set():
            await self.refresh()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), self.keepalive_interval)

    async def refresh(self) -> None:
        """One keepalive of our lease, if we have one; never raises for etcd trouble."""
        if self.lease is None:
            return
        sent = self.monotonic()
        try:
            ttl = await self.store.keepalive(self.lease)
            self.last_keepalive_latency = self.monotonic() - sent
            if self.lapse and self.monotonic() >= self.deadline:
                self.lease = None  # a standby may have revoked it on a 0 s reading meanwhile
                self._lose("lease lapsed: no keepalive renewed within lease_ttl")
                return
            self.deadline = sent + self._counted(ttl)
        except LeaseLost as exc:
            self.lease = None
            self._lose(str(exc))
        except StoreUnavailable as exc:
            log.warning("lease keepalive failed", error=str(exc))
            if self.monotonic() >= self.deadline:
                self._lose("lease deadline passed without a keepalive")
        except StoreError as exc:
            log.warning("lease keepalive failed", error=str(exc))

    def _counted(self, ttl: int) -> float:
        return min(ttl, self.ttl) if self.lapse else ttl

    def lease_remaining(self) -> float:
        return max(0.0, self.deadline - self.monotonic()) if self.lease is not None else 0.0

    async def resign(self) -> None:
        """Hand leadership over now: delete our leader key, revoke our lease."""
        revision, lease = self.revision, self.lease
        self._lose("stepping down")
        self.lease = None
        try:
            if revision is not None:
                await self.store.txn([created_at(self.key, revision)], [Delete(self.key)])
            if lease is not None:
                await self.store.revoke(lease)
        except StoreError as exc:
            log.warning("could not step down cleanly; the lease will expire", error=str(exc))
