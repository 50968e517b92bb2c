"""The controller's I/O shell: observe etcd, decide, execute, log one line.

A cycle runs whenever the watch sees a change under the cluster prefix (so a
release acknowledgement is answered within milliseconds) and at least every
`tick` seconds (so time-based rules and a silent watch still make progress).
The controller keeps no state of its own that matters for correctness. It
remembers when it first saw each VIP unowned (the reported gap), and, in
`controller.memory`, how long scores, liveness losses and unheld VIPs have
lasted, on its own monotonic clock, for the hold-downs (every controller
observes, standbys too, so a new leader starts with that history).

The election keepalive and the watch are supervised: a failed watch is
started again; a failed keepalive ends the process (systemd restarts it),
since a controller that cannot keep its lease must not keep deciding.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import replace

import structlog

from controller.actions import Action, WriteSettings
from controller.announce import Policy as AnnouncePolicy
from controller.announcesync import AnnounceSync
from controller.decide import Policy, decide
from controller.election import Election
from controller.embargo import Embargo
from controller.execute import Executor
from controller.expiry import lapse_of, revoke_when_expired
from controller.memory import Memory
from controller.metrics import ControllerMetrics
from controller.probes import Prober
from controller.vacancy import vacate
from haproxy_py.cluster.config import ClusterConfig, ControllerConfig
from haproxy_py.cluster.records import ClusterPolicy, ClusterView
from haproxy_py.cluster.store import StoreError, StoreUnavailable
from haproxy_py.cluster.storeapi import KVStore
from haproxy_py.cluster.tasks import settle, supervised
from haproxy_py.cluster.timing import fence_deadline

log = structlog.get_logger(__name__)


def desired_settings(cluster: ClusterConfig, current: ClusterPolicy | None) -> ClusterPolicy:
    """The config file's policy, keeping the pause and drain state stored in etcd."""
    base = current or ClusterPolicy()
    return replace(
        base,
        mode=cluster.mode,
        vips=cluster.vips,
        failback=cluster.failback,
        failback_hold=cluster.failback_hold,
    )


class Controller:
    """One controller process: campaigns, and while leading keeps the cluster placed."""

    def __init__(
        self,
        store: KVStore,
        cluster: ClusterConfig,
        config: ControllerConfig,
        identity: str,
        metrics: ControllerMetrics | None = None,
        metrics_url: str | None = None,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        prober: Prober | None = None,
    ) -> None:
        self.store = store
        self.prober = prober  # the owners' authenticated liveness (None: lease alone)
        self.cluster = cluster
        self.config = config
        self.identity = identity
        self.clock = clock  # wall time: records, decisions
        self.monotonic = monotonic  # lease deadlines and hold-downs
        self.metrics = metrics or ControllerMetrics()
        self.election = Election(
            store,
            identity,
            config.lease_ttl,
            config.keepalive_interval,
            metrics_url,
            clock,
            monotonic,
            config.lapse,
        )
        self.election.on_change = self._leadership_changed
        self.executor = Executor(store, self.election.fence, config.event_history, clock)
        self.policy = Policy(
            release_timeout=config.release_timeout,
            request_history=config.request_history,
            controller=identity,
        )
        self.announcements = AnnounceSync(
            store, self.election.fence, AnnouncePolicy(min_announcers=cluster.min_announcers)
        )
        self.memory = Memory(config.health_hold, config.ready_hold, config.unheld_limit, monotonic)
        self.stopping = asyncio.Event()
        self.wake = asyncio.Event()
        self.unowned_since: dict[str, float] = {}
        self.leading = False
        self._last_reason: str | None = None
        self._last_problems: tuple[str, ...] = ()
        self._etcd_down = False
        self._expiries: dict[int, asyncio.Task[bool]] = {}  # owner lease -> its early revoke
        # VIPs of leases revoked for failed probes, until their fence fell
        self.embargo = Embargo(fence_deadline(prober.timing) if prober else 0.0)
        self.metrics.bind(
            lambda: self.leading,
            self.election.lease_remaining,
            lambda: self.election.last_keepalive_latency,
        )

    def stop(self) -> None:
        self.stopping.set()
        self.wake.set()

    def _leadership_changed(self, leading: bool) -> None:
        self.leading = leading
        self.metrics.transitions.inc()
        self.wake.set()

    async def run(self) -> None:
        """Until `stop()`: keep the lease, watch etcd, run cycles; then step down."""
        keepalive = asyncio.create_task(
            supervised("keepalive", self._keep_alive, restart=False), name="keepalive"
        )
        tasks = [keepalive, asyncio.create_task(supervised("watch", self._watch), name="watch")]
        if self.prober is not None:
            self.prober.wake = self.wake.set
            self.prober.deposed = self.metrics.depositions.inc
            probes = supervised("probes", lambda: self._probe(self.prober))
            tasks.append(asyncio.create_task(probes, name="probes"))
        cycles = asyncio.create_task(self._cycles(), name="cycles")
        try:
            await asyncio.wait([cycles, keepalive], return_when=asyncio.FIRST_COMPLETED)
            if keepalive.done():
                cycles.cancel()
                keepalive.result()  # raises its failure: the process exits
            await cycles
        finally:
            for task in [*tasks, *self._expiries.values()]:
                task.cancel()
            # bounded: a task that swallows its cancellation must not hold the stop up
            await settle([*tasks, *self._expiries.values()])
            await self.election.resign()
            log.info("controller stopped", controller=self.identity)

    async def _cycles(self) -> None:
        while not self.stopping.is_set():
            self.wake.clear()
            await self.cycle()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), self.config.tick)

    async def _probe(self, prober: Prober | None) -> None:
        assert prober is not None
        await prober.run(lambda: self.leading, lambda: self.election.lease)

    async def _keep_alive(self) -> None:
        await self.election.keep_alive(self.stopping)
        await asyncio.Event().wait()  # stopping: wait to be cancelled, never "return"

    async def _watch(self) -> None:
        revision = 0
        while revision == 0 and not self.stopping.is_set():
            try:
                revision = (await self.store.read_view()).revision
            except StoreError:
                await asyncio.sleep(self.config.tick)
        async for event in self.store.watch(self.store.schema.prefix, revision + 1):
            self.announcements.observe(event)
            self.wake.set()

    async def cycle(self) -> None:
        """Read, (campaign,) decide, execute: one round. Never raises for etcd trouble."""
        started = time.monotonic()
        try:
            await self._cycle()
            self._reachable(True)
        except StoreUnavailable as exc:
            self._reachable(False, str(exc))
        except StoreError as exc:
            log.error("cycle failed", error=str(exc))
            self.metrics.cycle_errors.inc()
        except Exception:
            # One bad cycle must not end the daemon; the next one starts from a fresh read.
            log.exception("cycle crashed")
            self.metrics.cycle_errors.inc()
        finally:
            self.metrics.cycle_seconds.set(time.monotonic() - started)

    async def _cycle(self) -> None:
        view = await vacate(self.store, await self.store.read_view())
        self._observe(view)
        seen = self.memory.observe(view)
        self._watch_leases(view)
        self.embargo.observe(view, time.monotonic())  # standbys too: any of us may lead next
        if self.prober is not None:
            self.prober.view = view  # standbys probe too
        if view.problems != self._last_problems:
            if view.problems:
                log.warning("unreadable keys ignored", problems=list(view.problems))
            self._last_problems = view.problems
        if not self.election.leading(view):
            leader = view.leader
            stale = leader if leader is not None and leader.lease == 0 else None
            if (leader is not None and stale is None) or not await self.election.campaign(stale):
                return
            view = await vacate(self.store, await self.store.read_view())
            if not self.election.leading(view):
                return
        wanted = desired_settings(self.cluster, view.settings)
        if not wanted.same_content(view.settings):
            # An unreadable `config` (a newer version's mode, a hand edit) is replaced by
            # comparing on its own revision; until that lands, decide with this file's policy.
            mod = view.settings.mod_revision if view.settings else view.config_mod_revision
            await self._execute(view, [WriteSettings(wanted, mod)], "apply the configured policy")
            if view.settings is not None or not view.config_mod_revision:
                return
            view = replace(view, settings=wanted)
        view = self.embargo.guard(view, time.monotonic())
        if left := self.embargo.left(time.monotonic()):  # decide again when it ends
            asyncio.get_running_loop().call_later(left + 0.01, self.wake.set)
        decision = decide(view, self.clock(), self.policy, seen)
        if decision.actions:
            await self._execute(view, decision.actions, decision.reason)
        elif decision.reason != self._last_reason:
            log.info("cycle", controller=self.identity, reason=decision.reason, actions=[])
        self._last_reason = decision.reason
        if wanted.mode == "bgp":
            await self.announcements.sync(view, wanted)

    async def _execute(self, view: ClusterView, actions: Sequence[Action], reason: str) -> None:
        outcome = await self.executor.run(view, actions, self.unowned_since)
        log.info(
            "cycle",
            controller=self.identity,
            reason=reason,
            actions=[type(a).__name__ for a in actions],
            applied=outcome.applied,
            conflict=outcome.conflict,
        )
        self.metrics.vip_transitions.inc(outcome.assignments)
        if outcome.conflict is None:
            self.wake.set()  # look again at once: the next step may already be possible
        # After a lost race, whatever won it is a change the watch wakes us for; a compare
        # that fails with nothing changing would otherwise spin: it waits for the tick instead.

    def _watch_leases(self, view: ClusterView) -> None:
        """Revoke each VIP owner's lease, and another controller's leader lease, as soon as it
        has provably run out (`controller.expiry`), so a dead node's VIPs move without waiting
        for etcd's sweep. Standbys too: when the leader dies with its node, the standby that
        follows has proved both leases' end by then (a proof started at election takes 1 s)."""
        # lease -> its owner's lapse (`controller.expiry`), from the record under that lease
        leases = {a.lease: lapse_of(view, a.node, a.lease) for a in view.vips.values() if a.lease}
        if view.leader is not None and view.leader.lease not in (0, self.election.lease):
            leases.setdefault(view.leader.lease, view.leader.lapse)
        for lease in set(self._expiries) - set(leases):
            self._expiries.pop(lease).cancel()
        for lease in set(leases) - set(self._expiries):
            expiry = revoke_when_expired(self.store, lease, self.monotonic, leases[lease])
            task = asyncio.create_task(expiry, name="expiry")
            self._expiries[lease] = task
            task.add_done_callback(functools.partial(self._lease_revoked, lease))

    def _lease_revoked(self, lease: int, task: asyncio.Task[bool]) -> None:
        if self._expiries.get(lease) is task:
            del self._expiries[lease]
        if task.cancelled():
            return
        if task.exception() is not None:  # the next cycle starts a fresh one
            log.error("lease watch failed", lease=f"{lease:x}", error=repr(task.exception()))
        elif task.result():
            log.info("lease revoked: it had run out", lease=f"{lease:x}")
            self.wake.set()

    def _observe(self, view: ClusterView) -> None:
        """Remember since when each configured VIP may be unheld (for the reported gap).

        That is when its release was asked (the owner may drop the address from
        then on), or else when its key was first seen gone.
        """
        now = self.clock()
        configured = view.settings.vips if view.settings else self.cluster.vips
        for vip in configured:
            a = view.vips.get(vip)
            if a is not None and a.state == "releasing":
                self.unowned_since.setdefault(vip, a.releasing_since or now)
            elif vip in view.occupied:
                self.unowned_since.pop(vip, None)
            else:
                self.unowned_since.setdefault(vip, now)
        self.metrics.unowned.set(float(sum(1 for v in configured if v not in view.occupied)))

    def _reachable(self, up: bool, error: str | None = None) -> None:
        self.metrics.etcd_reachable.set(1.0 if up else 0.0)
        if up and self._etcd_down:
            log.info("etcd reachable again", controller=self.identity)
        elif not up and not self._etcd_down:
            log.warning("etcd unreachable", controller=self.identity, error=error)
        if self.prober is not None and up == self._etcd_down:  # a change, either way
            self.prober.verdicts.trusted_from = time.monotonic() if up else math.inf
        self._etcd_down = not up
