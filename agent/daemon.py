"""The agent's asyncio loop around the pure core (`agent.state`).

Observers (lease keepalive, proxy health, the `vips/` watch, a level-triggered
reconcile timer, a fencing tick) only post closures to one queue; a single
actor task runs them against the core and executes the actions it returns.
Netlink and GARP are done by the actor itself (fast, local); etcd writes go to
a separate writer task, so a frozen etcd can never hold up self-fencing. Once
a released VIP's key is deleted, a task of its own asks the proxy to close
that address's WebSockets with 1001 (`POST /drain?address=`), as soon as the
VIP's next owner holds it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import structlog
from aiohttp import web

from agent.garp import Announcer
from agent.metrics import AgentMetrics
from agent.netlink import Addresses, NetlinkFailure
from agent.proxy import ProxyClient, ProxyStatus
from agent.state import (
    Action,
    AgentCore,
    Assignment,
    DeleteVip,
    Hysteresis,
    KeepaliveNow,
    PublishNode,
    Regrant,
    RemoveAddress,
    Revoke,
    SetAddress,
    StartGarp,
    StopGarp,
)
from haproxy_py.cluster.agent_config import AgentConfig
from haproxy_py.cluster.config import NodeConfig
from haproxy_py.cluster.records import KeyValue, NodeRecord, VipAssignment
from haproxy_py.cluster.store import LeaseLost, Store, StoreError
from haproxy_py.metrics import serve

log = structlog.get_logger(__name__)

Step = Callable[[], Awaitable[list[Action]]]
TICK = 0.05  # fencing resolution: well below the 0.25 s margin
STATUS_EVERY = 1.0  # /status is polled (and the node record refreshed) at most this often
STOP_STEP_LIMIT = 5.0  # removing the addresses and revoking the lease at stop, at most
SETTLE_LIMIT = 1.0  # for cancelled tasks to finish
HANDOVER_WAIT = 1.0  # a released VIP's clients are told to go once it has a new owner, or this
HANDOVER_POLL = 0.005  # how often the VIP's next owner is looked for meanwhile


async def _settle(tasks: list[asyncio.Task[None]]) -> None:
    """Wait a bounded time for cancelled tasks; name any that do not finish."""
    _, pending = await asyncio.wait(tasks, timeout=SETTLE_LIMIT)
    for task in pending:
        log.warning("task did not stop when cancelled", task=task.get_name())


@dataclass(frozen=True)
class Settings:
    node: NodeConfig
    cluster: str
    agent: AgentConfig
    version: str
    vips: tuple[str, ...] = ()  # the cluster's VIPs if this node's config lists them


def assignment_of(kv: KeyValue, prefix: str) -> tuple[str, Assignment | None]:
    """The VIP a `vips/` key names and what it says (None when unreadable)."""
    vip = kv.key[len(prefix) :]
    record = VipAssignment.parse(vip, kv.value, kv.lease, kv.mod_revision)
    if record is None:
        return vip, None
    return vip, Assignment(record.node, record.state, record.lease, record.mod_revision)


class Agent:
    """One node agent: run() until `stop()`, then hand everything over and return."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        addresses: Addresses,
        announcer: Announcer,
        proxy: ProxyClient,
    ) -> None:
        self.settings = settings
        self.store = store
        self.addresses = addresses
        self.announcer = announcer
        self.proxy = proxy
        cfg = settings.agent
        self.core = AgentCore(
            settings.node.name, cfg.timing, Hysteresis(cfg.health_rise, cfg.health_fall)
        )
        self.core.known_vips.update(settings.vips)
        self.metrics = AgentMetrics(
            lambda: self.core.deadline - time.monotonic(), lambda: list(self.core.held)
        )
        announcer.on_sent = lambda vip: self.metrics.garps.inc()
        self.vips_prefix = store.schema.vips_prefix
        self.node_key = store.schema.node(settings.node.name)
        self._queue: asyncio.Queue[Step] = asyncio.Queue()
        self._writes: asyncio.Queue[Callable[[], Awaitable[None]]] = asyncio.Queue()
        self._publish_pending = False
        self._publish_failed = False
        self._etcd_ok = True
        self._keepalive_now = asyncio.Event()
        self._stop = asyncio.Event()
        self._registrar: asyncio.Task[None] | None = None
        self._status: ProxyStatus | None = None
        self._healthy_since: float | None = None
        self._published_figures: tuple[int | None, int | None, int | None] = (None, None, None)
        self._last_publish = 0.0
        self._client_drains: set[asyncio.Task[None]] = set()
        self.metrics_port: int | None = None

    # --- lifecycle -------------------------------------------------------------------------

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        """Register, serve until stop(), then release: drain, drop addresses, revoke."""
        lease_step = await self._grant()  # StoreError here: etcd unreachable at start
        self._post(lease_step)
        kvs, revision = await self.store.get_prefix(self.vips_prefix)
        self._post(self._snapshot_step(kvs, revision))
        self._post(self._kernel_step)
        observers = [
            asyncio.create_task(self._keepalive_loop(), name="keepalive"),
            asyncio.create_task(self._health_loop(), name="health"),
            asyncio.create_task(self._watch_loop(revision + 1), name="watch"),
            asyncio.create_task(self._reconcile_loop(), name="reconcile"),
            asyncio.create_task(self._tick_loop(), name="tick"),
        ]
        tasks = [
            asyncio.create_task(self._actor(), name="actor"),
            asyncio.create_task(self._writer(), name="writer"),
            *observers,
        ]
        runner = await self._serve_metrics()
        stopped = asyncio.create_task(self._stop.wait(), name="stop")
        try:
            done, _ = await asyncio.wait([stopped, *tasks], return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                failure = None if task is stopped or task.cancelled() else task.exception()
                if failure is not None:
                    raise failure
            await self._release(observers)
        finally:
            stopped.cancel()
            drains = list(self._client_drains)
            for task in [*tasks, *drains]:
                task.cancel()
            await _settle([*tasks, *drains])
            if self._registrar is not None:
                self._registrar.cancel()
            if runner is not None:
                await runner.cleanup()

    async def _release(self, observers: list[asyncio.Task[None]]) -> None:
        """SIGTERM: tell the proxy to drain, drop every VIP, revoke the lease (deletes our keys)."""
        started = time.monotonic()
        for task in observers:
            task.cancel()
        await _settle(observers)
        drained = await self.proxy.drain()
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        async def stop_step() -> list[Action]:
            return self.core.stop()

        async def finished() -> list[Action]:
            done.set_result(None)
            return []

        # through the actor, after whatever it has queued: when `done` is set, the addresses
        # are gone and the lease is revoked
        self._post(stop_step)
        self._post(finished)
        try:
            async with asyncio.timeout(STOP_STEP_LIMIT):
                await done
        except TimeoutError:
            log.error("addresses not released in time; the kernel lifetime removes them")
        log.info(
            "agent stopped",
            drain=drained,
            handover_ms=round((time.monotonic() - started) * 1000, 1),
        )

    async def _serve_metrics(self) -> web.AppRunner | None:
        cfg = self.settings.agent
        if cfg.metrics_host is None:
            return None
        try:
            runner, port = await serve(self.metrics.registry, cfg.metrics_host, cfg.metrics_port)
        except OSError as exc:
            log.error(
                "metrics endpoint not started",
                bind=f"{cfg.metrics_host}:{cfg.metrics_port}",
                error=exc.strerror,
            )
            return None
        self.metrics_port = port
        log.info("metrics listening", url=f"http://{cfg.metrics_host}:{port}/metrics")
        return runner

    # --- the actor --------------------------------------------------------------------------

    def _post(self, step: Step) -> None:
        self._queue.put_nowait(step)

    async def _actor(self) -> None:
        while True:
            step = await self._queue.get()
            try:
                await self._execute(await step())
            finally:
                self._queue.task_done()

    async def _execute(self, actions: list[Action]) -> None:
        prefix = self.settings.agent.vip_prefix_length
        failed: set[str] = set()  # no GARP for an address that could not be set
        # An address the kernel may still carry is never acknowledged as released: the new
        # owner would overlap with it. The reconcile timer retries the removal, and the
        # address lifetime runs out meanwhile, since nothing refreshes it any more.
        still_held: set[str] = set()
        for action in actions:
            if isinstance(action, SetAddress):
                try:
                    await self.addresses.arm(
                        action.vip, prefix, action.lifetime, self.core.held.get(action.vip, 0.0)
                    )
                except NetlinkFailure as exc:
                    log.error("cannot set VIP address", vip=action.vip, error=str(exc))
                    self.core.address_failed(action.vip)
                    failed.add(action.vip)
                    continue
                if action.new:
                    self.metrics.transitions.inc(direction="add")
                    log.info("VIP added", vip=action.vip, reason=action.reason)
            elif isinstance(action, RemoveAddress):
                try:
                    await self.addresses.remove(action.vip, prefix)
                except NetlinkFailure as exc:
                    log.error("cannot remove VIP address", vip=action.vip, error=str(exc))
                    still_held.add(action.vip)
                    continue
                self.metrics.transitions.inc(direction="remove")
                if action.reason.startswith("self-fence"):
                    self.metrics.fenced.inc()
                    log.warning("VIP removed", vip=action.vip, reason=action.reason)
                else:
                    log.info("VIP removed", vip=action.vip, reason=action.reason)
            elif isinstance(action, StartGarp) and action.vip not in failed:
                self.announcer.start(action.vip)
            elif isinstance(action, StopGarp):
                self.announcer.stop(action.vip)
            elif isinstance(action, DeleteVip) and action.vip not in still_held:
                self._write(self._delete_vip(action))
            elif isinstance(action, PublishNode):
                self._publish()
            elif isinstance(action, KeepaliveNow):
                self._keepalive_now.set()
            elif isinstance(action, Regrant):
                if self._registrar is None or self._registrar.done():
                    self._registrar = asyncio.create_task(self._regrant(), name="regrant")
            elif isinstance(action, Revoke):
                await self._revoke()

    # --- etcd writes (never on the actor) -----------------------------------------------------

    def _etcd(self, ok: bool, error: str = "") -> None:
        """Track whether etcd answers; log the changes, not every failed call."""
        if ok != self._etcd_ok:
            if ok:
                log.info("etcd reachable again")
            else:
                log.warning(
                    "etcd unreachable; VIPs are kept only until the lease deadline", error=error
                )
        elif not ok:
            log.debug("etcd call failed", error=error)
        self._etcd_ok = ok
        self.metrics.etcd_reachable.set(1 if ok else 0)

    def _write(self, write: Callable[[], Awaitable[None]]) -> None:
        self._writes.put_nowait(write)

    async def _writer(self) -> None:
        while True:
            write = await self._writes.get()
            try:
                await write()
                self._etcd(True)
            except LeaseLost:
                lease = self.core.lease_id
                self._post(self._lease_lost_step(lease))
            except StoreError as exc:
                self._etcd(False, f"write: {exc}")

    def _delete_vip(self, action: DeleteVip) -> Callable[[], Awaitable[None]]:
        async def write() -> None:
            deleted = await self.store.delete_if(self.store.schema.vip(action.vip), action.revision)
            log.info(
                "VIP key deleted" if deleted else "VIP key changed meanwhile; not deleted",
                vip=action.vip,
                reason=action.reason,
            )
            if deleted:
                self._drain_clients(action.vip, action.revision)

        return write

    # --- the released VIP's clients -----------------------------------------------------------

    def _drain_clients(self, vip: str, released: int) -> None:
        """The address is gone and the release (of the key at revision `released`)
        acknowledged: now tell the VIP's clients to go, off the critical path.

        The proxy's 1001 waits (at most HANDOVER_WAIT) until the VIP's next
        owner says in its node record that it holds the address, which it
        announces by gratuitous ARP first: a client told earlier would reconnect
        to an address nobody answers for and wait out a SYN retransmit (1 s).
        """
        task = asyncio.create_task(self._drain_after_handover(vip, released), name=f"drain {vip}")
        self._client_drains.add(task)
        task.add_done_callback(self._client_drains.discard)

    async def _drain_after_handover(self, vip: str, released: int) -> None:
        started = time.monotonic()
        owner = None
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(HANDOVER_WAIT):
                owner = await self._next_owner(vip, released)
                if owner != self.core.name:
                    await self._held_by(owner, vip)
        if owner == self.core.name:
            log.info("released VIP came back; its clients stay", vip=vip)
            return
        outcome = await self.proxy.drain_address(vip)
        log.info(
            "released VIP's clients told to reconnect",
            vip=vip,
            new_owner=owner,
            waited_ms=round((time.monotonic() - started) * 1000, 1),
            proxy=outcome,
        )

    async def _next_owner(self, vip: str, released: int) -> str:
        """The owner of the first assignment of `vip` newer than the released one (polled)."""
        while True:
            assignment = self.core.assignments.get(vip)
            if assignment is not None and assignment.revision > released:
                return assignment.owner
            await asyncio.sleep(HANDOVER_POLL)

    async def _held_by(self, node: str, vip: str) -> None:
        """Poll `nodes/<node>` until it lists `vip` (the caller bounds the time)."""
        key = self.store.schema.node(node)
        while True:
            try:
                kv = await self.store.get(key)
            except StoreError:
                return  # no way to know: tell the clients now rather than later
            record = None if kv is None else NodeRecord.parse(node, kv.value, kv.lease)
            if record is not None and vip in record.vips:
                return
            await asyncio.sleep(HANDOVER_POLL)

    def _publish(self) -> None:
        """Queue one write of `nodes/<name>` built from the state at write time."""
        if self._publish_pending:
            return
        self._publish_pending = True

        async def write() -> None:
            self._publish_pending = False
            lease = self.core.lease_id
            if lease is None or self.core.stopping:
                return
            record = self._node_record(lease)
            self._publish_failed = True  # until the put succeeds; the reconcile timer retries
            await self.store.put(self.node_key, record.to_json(), lease=lease)
            self._publish_failed = False
            self._last_publish = time.monotonic()
            self._published_figures = (
                record.backends_up,
                record.backends_total,
                record.connections,
            )

        self._write(write)

    def _node_record(self, lease: int) -> NodeRecord:
        node, status = self.settings.node, self._status
        return NodeRecord(
            name=node.name,
            address=node.address,
            interface=node.interface,
            priority=node.priority,
            version=self.settings.version,
            healthy=self.core.health.healthy,
            healthy_since=self._healthy_since,
            backends_up=(status.backends_up or 0) if status else 0,
            backends_total=(status.backends_total or 0) if status else 0,
            connections=(status.connections or 0) if status else 0,
            vips=tuple(sorted(self.core.held)),
            updated=time.time(),
            lease=lease,
        )

    # --- lease -------------------------------------------------------------------------------

    async def _grant(self) -> Step:
        sent = time.monotonic()
        lease = await self.store.grant_lease(self.settings.agent.timing.lease_ttl)
        self._etcd(True)
        log.info("lease granted", lease=f"{lease.id:x}", ttl=lease.ttl)

        async def step() -> list[Action]:
            return self.core.lease_granted(lease.id, sent, lease.ttl, time.monotonic())

        return step

    async def _revoke(self) -> None:
        """Stopping: blocking the actor is fine now, nothing else is left for it to do."""
        lease = self.core.lease_id
        if lease is None:
            return
        try:
            await self.store.revoke(lease)
        except StoreError as exc:
            log.warning("lease revoke failed; it expires by itself", error=str(exc))

    async def _regrant(self) -> None:
        backoff = 0.1
        while True:
            try:
                step = await self._grant()
                break
            except StoreError as exc:
                self._etcd(False, f"lease grant: {exc}")
                await asyncio.sleep(backoff)
                backoff = min(2 * backoff, 1.0)
        self._post(step)
        await self._post_snapshot()

    def _lease_lost_step(self, lease: int | None) -> Step:
        async def step() -> list[Action]:
            if lease is None or self.core.lease_id != lease:
                return []
            log.warning("lease lost", lease=f"{lease:x}")
            return self.core.lease_lost(time.monotonic())

        return step

    async def _keepalive_loop(self) -> None:
        timing = self.settings.agent.timing
        # After a failure, try again soon: an etcd leader election or a dead endpoint costs
        # one retry period instead of a whole interval of the little time the address has left.
        retry = timing.keepalive_interval / 5
        wait = timing.keepalive_interval
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._keepalive_now.wait()
            wait = retry
            self._keepalive_now.clear()
            lease = self.core.lease_id
            if lease is None or self.core.stopping:
                continue
            sent = time.monotonic()
            try:
                async with asyncio.timeout(timing.keepalive_timeout):
                    ttl = await self.store.keepalive(lease)
            except LeaseLost:
                self._etcd(True)
                self._post(self._lease_lost_step(lease))
                continue
            except (StoreError, TimeoutError) as exc:
                self.metrics.keepalive_failures.inc()
                self._etcd(False, f"keepalive: {str(exc) or 'no answer in time'}")
                self._post(self._keepalive_failed_step())
                continue
            wait = timing.keepalive_interval
            self._etcd(True)
            self.metrics.keepalive_latency.set(time.monotonic() - sent)
            self._post(self._keepalive_ok_step(lease, sent, ttl))

    def _keepalive_ok_step(self, lease: int, sent: float, ttl: int) -> Step:
        async def step() -> list[Action]:
            if self.core.lease_id != lease:
                return []
            was_fenced = self.core.fenced
            actions = self.core.keepalive_ok(sent, ttl, time.monotonic())
            if was_fenced and not self.core.fenced:
                log.info("keepalive succeeded again; fence lifted")
            return actions

        return step

    def _keepalive_failed_step(self) -> Step:
        async def step() -> list[Action]:
            return self.core.keepalive_failed(time.monotonic())

        return step

    # --- observers -----------------------------------------------------------------------------

    async def _health_loop(self) -> None:
        cfg = self.settings.agent
        last_status = -STATUS_EVERY
        while True:
            started = time.monotonic()
            with_status = started - last_status >= STATUS_EVERY
            if with_status:
                last_status = started
            status = await self.proxy.probe(with_status)
            self._post(self._health_step(status, with_status))
            await asyncio.sleep(max(0.0, cfg.health_interval - (time.monotonic() - started)))

    def _health_step(self, status: ProxyStatus, with_status: bool) -> Step:
        async def step() -> list[Action]:
            was = self.core.health.healthy
            if with_status or self._status is None:
                self._status = status
            actions = self.core.health_sample(status.ok, time.monotonic())
            healthy = self.core.health.healthy
            self.metrics.proxy_healthy.set(1 if healthy else 0)
            if healthy != was:
                self._healthy_since = time.time() if healthy else None
                (log.info if healthy else log.warning)(
                    "proxy healthy" if healthy else "proxy unhealthy", detail=status.detail
                )
            figures = (status.backends_up, status.backends_total, status.connections)
            stale = time.monotonic() - self._last_publish >= STATUS_EVERY
            if with_status and figures != self._published_figures and stale:
                self._publish()
            return actions

        return step

    async def _watch_loop(self, start_revision: int) -> None:
        async for event in self.store.watch(self.vips_prefix, start_revision):
            if event.kind == "resync":
                await self._post_snapshot()
                continue
            kv = KeyValue(event.key, event.value, 0, event.mod_revision, event.lease)
            vip, assignment = assignment_of(kv, self.vips_prefix)
            if event.kind == "delete":
                assignment = None
            self._post(self._event_step(vip, assignment, event.mod_revision))

    def _event_step(self, vip: str, assignment: Assignment | None, revision: int) -> Step:
        async def step() -> list[Action]:
            return self.core.assignment_event(vip, assignment, revision, time.monotonic())

        return step

    async def _post_snapshot(self) -> None:
        try:
            kvs, revision = await self.store.get_prefix(self.vips_prefix)
        except StoreError as exc:
            self._etcd(False, f"read: {exc}")
        else:
            self._etcd(True)
            self._post(self._snapshot_step(kvs, revision))
        self._post(self._kernel_step)

    def _snapshot_step(self, kvs: list[KeyValue], revision: int) -> Step:
        async def step() -> list[Action]:
            current: dict[str, Assignment] = {}
            for kv in kvs:
                vip, assignment = assignment_of(kv, self.vips_prefix)
                if assignment is not None:
                    current[vip] = assignment
            return self.core.assignments_snapshot(current, revision, time.monotonic())

        return step

    async def _kernel_step(self) -> list[Action]:
        try:
            present = await self.addresses.expiring()
        except NetlinkFailure as exc:
            log.error("cannot list addresses", error=str(exc))
            return []
        return self.core.kernel_addresses(present, time.monotonic())

    async def _reconcile_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.agent.reconcile_interval)
            if self._publish_failed:
                self._publish()
            await self._post_snapshot()

    async def _tick_loop(self) -> None:
        async def step() -> list[Action]:
            return self.core.tick(time.monotonic())

        while True:
            await asyncio.sleep(TICK)
            if self.core.held:
                self._post(step)
