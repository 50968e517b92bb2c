"""Carrying out the core's actions: addresses (netlink), ARP (AF_PACKET), and etcd writes.

Netlink and GARP are done on the actor itself (fast, local); etcd writes go to
a separate writer task, so a frozen etcd can never hold up self-fencing. The
address table and the announcer are reached through the two small protocols
below, so the wiring runs against fakes in tests without root.

A VIP interface that is deleted and created again (a bond or VLAN recreated,
with a new ifindex) makes every operation on the old index fail: the address
table and the ARP socket are then opened again by the interface's name.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Protocol

import structlog

from agent.actions import (
    AckRelease,
    Action,
    KeepaliveNow,
    PublishNode,
    Refused,
    Regrant,
    RemoveAddress,
    Revoke,
    SetAddress,
    StartGarp,
    StopGarp,
)
from agent.fence import FenceError
from agent.handover import GRACE
from agent.metrics import AgentMetrics
from agent.netlink import NetlinkFailure
from agent.state import AgentCore
from haproxy_py.cluster.store import LeaseLost, StoreError
from haproxy_py.cluster.storeapi import KVStore

log = structlog.get_logger(__name__)

Write = Callable[[], Awaitable[None]]
REOPEN_EVERY = 0.5  # look the interface up again by name at most this often


class Grace(Protocol):
    """The grace and leaving sets of the packet fence (`agent.fence.Fence`)."""

    def grace(self, vip: str, seconds: float) -> None: ...
    def let_out(self, vip: str) -> None: ...


class AddressTable(Protocol):
    """The VIP addresses on one interface, behind their fence (`agent.netlink.Addresses`)."""

    interface: str
    index: int
    mac: bytes

    @property
    def fence(self) -> Grace: ...

    async def arm(
        self, vip: str, prefixlen: int, lifetime: float, until: float | None = None
    ) -> None: ...
    async def remove(self, vip: str, prefixlen: int) -> bool: ...
    async def expiring(self) -> set[str]: ...
    def close(self) -> None: ...


class Announcer(Protocol):
    """Gratuitous ARP for held VIPs (`agent.garp.Announcer`)."""

    on_sent: Callable[[str], None]

    def start(self, vip: str) -> None: ...
    def stop(self, vip: str) -> None: ...
    def close(self) -> None: ...


Reopen = Callable[[], Awaitable[tuple[AddressTable, Announcer]]]


class EtcdState:
    """Whether etcd answers; logs the changes, not every failed call."""

    def __init__(self, metrics: AgentMetrics) -> None:
        self.metrics = metrics
        self.ok = True
        self.on_ok: Callable[[], None] = lambda: None  # every success (the failsafe's clock)
        self.on_failed: Callable[[], None] = lambda: None  # every failure

    def __call__(self, ok: bool, error: str = "") -> None:
        (self.on_ok if ok else self.on_failed)()
        if ok != self.ok:
            if ok:
                log.info("etcd reachable again")
            else:
                log.warning(
                    "etcd unreachable; VIPs are kept only until the lease deadline, or while "
                    "every peer vouches (failsafe)",
                    error=error,
                )
        elif not ok:
            log.debug("etcd call failed", error=error)
        self.ok = ok
        self.metrics.etcd_reachable.set(1 if ok else 0)


class Writer:
    """etcd writes in order, off the actor; a write that finds its lease gone reports it."""

    def __init__(self, etcd: EtcdState, lease_lost: Callable[[int], None]) -> None:
        self.etcd = etcd
        self.lease_lost = lease_lost
        self._queue: asyncio.Queue[tuple[int | None, Write]] = asyncio.Queue()

    def write(self, lease: int | None, write: Write) -> None:
        """Queue `write`, made under `lease` (the lease reported lost if it fails so)."""
        self._queue.put_nowait((lease, write))

    async def run(self) -> None:
        while True:
            lease, write = await self._queue.get()
            try:
                await write()
                self.etcd(True)
            except LeaseLost:
                if lease is not None:
                    self.lease_lost(lease)
            except StoreError as exc:
                self.etcd(False, f"write: {exc}")


class Effects:
    """Executes one batch of actions, in order, on the actor."""

    def __init__(
        self,
        core: AgentCore,
        addresses: AddressTable,
        announcer: Announcer,
        store: KVStore,
        writer: Writer,
        metrics: AgentMetrics,
        prefix_length: int,
        hooks: Hooks,
        reopen: Reopen | None = None,
    ) -> None:
        self.core = core
        self.addresses = addresses
        self.announcer = announcer
        self.store = store
        self.writer = writer
        self.metrics = metrics
        self.prefix_length = prefix_length
        self.hooks = hooks
        self.reopen = reopen
        self.released = asyncio.Event()  # stopping: every address gone, every key released
        # VIPs set and announced (their first gratuitous ARP leaves before anything queued
        # after it): only these are listed as held in the node record, the cue on which
        # the previous owner tells the VIP's clients to reconnect
        self.shown: set[str] = set()
        self._reopened_at = -REOPEN_EVERY
        announcer.on_sent = self._garp_sent

    def _garp_sent(self, vip: str) -> None:
        self.metrics.garps.inc()

    async def run(self, actions: list[Action]) -> None:
        failed: set[str] = set()  # no GARP for an address that could not be set
        removed = False
        for action in actions:
            if isinstance(action, SetAddress):
                if await self._arm(action):
                    continue
                failed.add(action.vip)
            elif isinstance(action, RemoveAddress):
                self.shown.discard(action.vip)
                removed = await self._remove(action) or removed
                if action.lost:  # no planned release will tell its clients: close them
                    self.hooks.released(action.vip)
            elif isinstance(action, StartGarp) and action.vip not in failed:
                self.announcer.start(action.vip)
                self.shown.add(action.vip)
            elif isinstance(action, StopGarp):
                self.shown.discard(action.vip)
                self.announcer.stop(action.vip)
            elif isinstance(action, AckRelease):
                # The node record carries the acknowledgement (PublishNode follows); once
                # the controller gives the VIP on, its clients here are told to go.
                log.info("VIP release acknowledged", vip=action.vip, reason=action.reason)
                self.hooks.released(action.vip)
            elif isinstance(action, Refused):
                log.error(
                    "VIP refused: assigned here, but not in this node's allowed_vips",
                    vip=action.vip,
                )
                self.metrics.refused.inc()
            elif isinstance(action, PublishNode):
                self.hooks.publish()
            elif isinstance(action, KeepaliveNow):
                self.hooks.keepalive_now()
            elif isinstance(action, Regrant):
                if action.reason != "lease lost":  # (that one the observer logged)
                    log.warning("lease given up; registering under a new one", why=action.reason)
                self.hooks.regrant(action.revoke)
            elif isinstance(action, Revoke):
                self.released.set()
        if removed:
            self.hooks.confirm_removals()  # a kernel dump, before any release is acknowledged

    async def _arm(self, action: SetAddress) -> bool:
        """Set the address; False (and the core told) when it could not be set."""
        if action.grace:
            try:
                self.addresses.fence.grace(action.vip, GRACE)
            except FenceError as exc:
                log.warning("no grace period for the VIP's moved clients", error=str(exc))
        try:
            until = self.core.held.get(action.vip, 0.0)  # the fence deadline: not after it
            await self.addresses.arm(action.vip, self.prefix_length, action.lifetime, until)
        except NetlinkFailure as exc:
            log.error("cannot set VIP address", vip=action.vip, error=str(exc))
            self.core.address_failed(action.vip, time.monotonic())
            await self.reopen_if_recreated()
            return False
        self.core.address_set(action.vip)
        if action.new:
            self.metrics.transitions.inc(direction="add")
            log.info("VIP added", vip=action.vip, reason=action.reason)
        return True

    def let_out(self, vip: str) -> None:
        """A released VIP's clients are about to be told to go: let the closes leave."""
        try:
            self.addresses.fence.let_out(vip)
        except FenceError as exc:
            log.warning("the VIP's closes cannot leave; its clients time out", error=str(exc))

    async def _remove(self, action: RemoveAddress) -> bool:
        try:
            await self.addresses.remove(action.vip, self.prefix_length)
        except NetlinkFailure as exc:
            # Never acknowledged while the kernel may carry it: the next dump retries the
            # removal, and its lifetime runs out meanwhile (nothing refreshes it any more).
            log.error("cannot remove VIP address", vip=action.vip, error=str(exc))
            return False
        self.metrics.transitions.inc(direction="remove")
        if action.fenced:
            self.metrics.fenced.inc()
            log.warning("VIP removed", vip=action.vip, reason=action.reason)
        else:
            log.info("VIP removed", vip=action.vip, reason=action.reason)
        return True

    async def reopen_if_recreated(self) -> None:
        """The VIP interface may be gone, or recreated with a new index: find it again by
        name (rate-limited). Meanwhile every address operation fails, so the core gives
        the VIPs up after an address lifetime and the controller can move them."""
        now = time.monotonic()
        if self.reopen is None or now - self._reopened_at < REOPEN_EVERY:
            return
        self._reopened_at = now
        name = self.addresses.interface
        try:
            index: int | None = socket.if_nametoindex(name)
        except OSError:
            index = None
        if index == self.addresses.index:
            return
        old = self.addresses.index
        self._replace(_Gone(name, -1, self.addresses.mac), _Silent())
        if index is None:
            log.error("VIP interface is gone", interface=name)
            return
        try:
            addresses, announcer = await self.reopen()
        except (NetlinkFailure, OSError) as exc:
            log.error("VIP interface not usable", interface=name, error=str(exc))
            return
        log.warning(
            "VIP interface was recreated; using it again",
            interface=name,
            old_index=old,
            new_index=addresses.index,
        )
        self._replace(addresses, announcer)

    def _replace(self, addresses: AddressTable, announcer: Announcer) -> None:
        self.announcer.close()
        self.addresses.close()
        self.addresses, self.announcer = addresses, announcer
        announcer.on_sent = self._garp_sent


class _NoGrace:
    def grace(self, vip: str, seconds: float) -> None:
        pass

    def let_out(self, vip: str) -> None:
        pass


class _Gone:
    """The address table while the VIP interface is missing: every operation fails."""

    def __init__(self, interface: str, index: int, mac: bytes) -> None:
        self.interface = interface
        self.index = index
        self.mac = mac
        self.fence = _NoGrace()

    def _failure(self) -> NetlinkFailure:
        return NetlinkFailure(f"interface {self.interface!r} is gone; waiting for it to return")

    async def arm(
        self, vip: str, prefixlen: int, lifetime: float, until: float | None = None
    ) -> None:
        raise self._failure()

    async def remove(self, vip: str, prefixlen: int) -> bool:
        raise self._failure()

    async def expiring(self) -> set[str]:
        raise self._failure()

    def close(self) -> None:
        pass


class _Silent:
    """The announcer while the VIP interface is missing."""

    on_sent: Callable[[str], None] = staticmethod(lambda vip: None)

    def start(self, vip: str) -> None:
        pass

    def stop(self, vip: str) -> None:
        pass

    def close(self) -> None:
        pass


class Hooks(Protocol):
    """What the effects ask of the rest of the agent."""

    def publish(self) -> None: ...
    def keepalive_now(self) -> None: ...
    def regrant(self, revoke: int) -> None: ...
    def confirm_removals(self) -> None: ...
    def released(self, vip: str) -> None: ...
