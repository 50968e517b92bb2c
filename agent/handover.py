"""Telling a released VIP's clients to go, once the VIP's next owner holds it.

After this node let a VIP go (a planned move, a drain, its own clean stop) or
lost it (self-fence, lease lost, or a VIP it does not hold when the agent
starts, which a killed predecessor may have held), the proxy still carries that
address's connections; unless they are closed, their clients' segments are
dropped silently and they hang on TCP retransmits. They are closed cleanly
(`POST /drain?address=VIP`: WebSockets get 1001 Going Away, HTTP keep-alive
connections a FIN after the response in flight) as soon as another node's
record in `nodes/` lists the VIP as held, which it does only once the address is
set and announced (gratuitous ARP): a client told earlier would reconnect to an
address nobody answers for and wait out a SYN retransmit (1 s). The wait is
bounded (`wait`, longer than a lost node's VIP takes to move), for a VIP that
nobody takes.

The next owner is learned from a watch on `nodes/`, so the 1001 leaves within
one etcd event of the new owner's write, not on a polling period. Until then
the fence keeps this node silent on the VIP's connections (`Fence.let_out`
opens it right before the drain): nothing sent meanwhile waits unacknowledged
in front of the 1001. Nor is anything sent before: a planned release first holds
the VIP's clients (`hold`: the proxy sends its WebSockets nothing more, starts no
new exchange on its keep-alive connections, and waits until they acknowledged
all, at most 2 s), since a segment in flight when the fence falls is never
acknowledged, and once retransmitted it fills the one segment the kernel's
window then allows, so the 1001 (or FIN) behind it would never leave.
Meanwhile the new owner drops unknown mid-stream TCP segments to a VIP it has
just taken (its grace period), so a client's packets sent before the 1001
arrives are dropped there, never answered with a reset. A VIP that comes back
before its drain (moved back, or the move called off) is not drained: its hold
ends at once (`unhold`), or its clients would wait until it ended by itself.

A proxy that comes back after it was down (stopped, restarted, killed) is told
again about every VIP this node does not hold (`proxy_back`): connections that
reached a VIP while its proxy was stopping or down wait in the listening queue
of haproxy-py.socket, which outlives the proxy; the next proxy accepts them and
answers from an address this node may have released meanwhile. Unless they are
told to go, with the fence let out, those answers are dropped and the clients
wait for good.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import Callable, Iterable
from typing import Protocol

import structlog

from haproxy_py.cluster.records import NodeRecord
from haproxy_py.cluster.store import StoreError
from haproxy_py.cluster.storeapi import KVStore

log = structlog.get_logger(__name__)

# The previous owner waits this long at most for the next owner's record: longer than a lost
# node's VIP takes to move (2.3 s budget), so no 1001 sends a client to an empty address.
WAIT = 3.0
# The next owner drops unknown mid-stream segments this long after a planned take-over: the
# previous owner's wait, plus 2 s for a starved proxy to send its 1001s. A shorter grace than
# the wait would answer with resets the clients whose 1001 comes late but comes.
GRACE = WAIT + 2.0


class Drainer(Protocol):
    async def drain_address(self, address: str) -> str: ...

    async def hold_address(self, address: str) -> str: ...

    async def unhold_address(self, address: str) -> str: ...


class Handover:
    """One task per released VIP: wait (at most `wait` s) for its new holder, then drain it."""

    def __init__(
        self,
        store: KVStore,
        proxy: Drainer,
        me: str,
        holding: Callable[[str], bool],
        wait: float,
        let_out: Callable[[str], None],
    ) -> None:
        self.store = store
        self.proxy = proxy
        self.me = me
        self.holding = holding  # True when the VIP came back to this node meanwhile
        self.let_out = let_out  # the fence lets the VIP's closes leave (silent until then)
        self.wait = wait
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self.told: set[str] = set()  # every VIP whose clients were told, or are being told

    def released(self, vips: Iterable[str]) -> None:
        """Start telling each VIP's clients (once: a VIP already being told is skipped)."""
        for vip in vips:
            self.told.add(vip)
            if vip in self._tasks:
                continue
            task = asyncio.create_task(self._tell(vip), name=f"handover {vip}")
            self._tasks[vip] = task
            task.add_done_callback(functools.partial(self._done, vip))

    async def hold(self, vips: Iterable[str]) -> None:
        """Before a planned release drops `vips`: the proxy sends their clients nothing more
        (no new exchange on keep-alive connections) until they acknowledged everything, so
        nothing is in flight when the fence falls (`haproxy_py.proxy.addresshold`)."""
        vips = list(vips)
        started = time.monotonic()
        outcomes = await asyncio.gather(*(self.proxy.hold_address(vip) for vip in vips))
        took = round((time.monotonic() - started) * 1000, 1)
        for vip, outcome in zip(vips, outcomes, strict=True):
            log.info("releasing VIP's clients held", vip=vip, proxy=outcome, held_ms=took)

    def proxy_back(self, vips: Iterable[str]) -> None:
        """The proxy is live again after it was down: tell it about the VIPs not held here."""
        self.released(vip for vip in vips if not self.holding(vip))

    def _done(self, vip: str, task: asyncio.Task[None]) -> None:
        if self._tasks.get(vip) is task:
            del self._tasks[vip]

    async def finish(self, limit: float) -> None:
        """Stopping: let the drains already started finish, within `limit` seconds."""
        if self._tasks:
            await asyncio.wait(list(self._tasks.values()), timeout=limit)

    def cancel(self) -> list[asyncio.Task[None]]:
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        return tasks

    async def _tell(self, vip: str) -> None:
        started = time.monotonic()
        owner = None
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.wait):
                owner = await self._next_holder(vip)
        if self.holding(vip):  # its hold would keep its clients waiting: end it now
            outcome = await self.proxy.unhold_address(vip)
            log.info("released VIP came back; its clients stay", vip=vip, proxy=outcome)
            return
        self.let_out(vip)
        outcome = await self.proxy.drain_address(vip)
        log.info(
            "released VIP's clients told to reconnect",
            vip=vip,
            new_owner=owner,
            waited_ms=round((time.monotonic() - started) * 1000, 1),
            proxy=outcome,
        )

    async def _next_holder(self, vip: str) -> str | None:
        """The first other node whose record lists `vip` (None: etcd cannot tell us)."""
        prefix = self.store.schema.nodes_prefix
        try:
            kvs, revision = await self.store.get_prefix(prefix)
            for kv in kvs:
                name = self._holder(kv.key[len(prefix) :], kv.value, vip)
                if name is not None:
                    return name
            async for event in self.store.watch(prefix, revision + 1):
                if event.kind == "put":
                    name = self._holder(event.key[len(prefix) :], event.value, vip)
                    if name is not None:
                        return name
                if self.holding(vip):
                    return self.me
        except StoreError as exc:
            log.warning("cannot see the VIP's next owner; telling clients now", error=str(exc))
        return None

    def _holder(self, name: str, raw: bytes, vip: str) -> str | None:
        if name == self.me:
            return self.me if self.holding(vip) else None
        record = NodeRecord.parse(name, raw)
        return name if record is not None and vip in record.vips else None
