"""The agent daemon's BGP side (`[cluster] mode = "bgp"`): etcd and the lease drive the announcer.

The agent keeps its lease, node record, liveness probes and failsafe as in
the floating-IP modes (it is given no `vips/` key, so its core holds no
address); this module adds, around `agent.bgp.Announcer`:

* the permission: `announce/<node>/vips`, written by the active controller
  (`controller.announcesync`), read at start, on every watch event and every
  reconcile period; unreadable or unreachable keeps the last one read;
* the fence, by the floating IP's rule (`fenced`): the node announces while
  its lease provably lives (`deadline - fence_margin`, the deadline counted
  from when the last successful keepalive was sent), or while a failsafe
  round, in which every peer vouched that it cannot reach etcd either, keeps
  it alive (`failsafe_until - fence_margin`). A node cut off alone from etcd
  therefore withdraws within the lease, as a floating IP would be fenced;
  when etcd is down for everyone, every node keeps announcing.
* a restart touches nothing it does not know: before the first lease the
  link is left as it is for one lease TTL (the previous agent's lease may
  still run), and for `restart_grace` BIRD's routes keep the VIPs they have
  while the node's record and the controller's answer settle.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Callable, Mapping

import structlog

from agent.bgp import Announcer
from agent.state import AgentCore
from haproxy_py.cluster import bird
from haproxy_py.cluster.announcement import Announce
from haproxy_py.cluster.store import StoreError
from haproxy_py.cluster.storeapi import KVStore
from haproxy_py.metrics import Registry, Sample

log = structlog.get_logger(__name__)
SETTLE = 2.0  # seconds BGP/BFD states must hold before the node record is rewritten for them


def session_states(
    peers: Mapping[str, str], protocols: Mapping[str, bird.Protocol], bfd: Mapping[str, str]
) -> dict[str, str]:
    """(pure) Peer name -> "<session>, BFD <state>" from BIRD's answers (`peers`: name ->
    address); the session's first word only, so the text changes only when the state does."""
    out = {}
    for name, address in sorted(peers.items()):
        p = protocols.get(name)
        session = "absent" if p is None else ((p.info.split() or [p.state])[0])
        out[name] = session + (f", BFD {bfd[address]}" if address in bfd else "")
    return out


def settled(
    published: Mapping[str, str], seen: Mapping[str, str], since: float, now: float
) -> bool:
    """(pure) Whether the states `seen` (unchanged since `since`) replace the `published` ones
    in the node record: they differ, and either every session is up (Established, BFD Up:
    written at once, so an agent's restart beside a running BIRD is one record write with its
    registration) or they have held for `SETTLE` s, so the passing states of a session coming
    up (Connect, OpenSent, BFD Init) cost no etcd write; `hactl status` shows a session's loss
    that much later (the router's BFD acts on it, not etcd)."""
    up = all(
        v.split(",")[0] == "Established" and ("BFD" not in v or v.endswith("BFD Up"))
        for v in seen.values()
    )
    return seen != published and (up or now - since >= SETTLE)


def fenced(
    now: float, deadline: float, failsafe_until: float, margin: float, unknown_until: float
) -> bool | None:
    """(pure) Whether the node must not announce; None while it cannot know (restarted, no
    lease yet, and the previous agent's lease may still run: touch nothing)."""
    if deadline == -math.inf and failsafe_until == -math.inf and now < unknown_until:
        return None
    return now >= max(deadline, failsafe_until) - margin


class BgpSide:
    """The permission loop and the fence seam for one agent's announcer."""

    def __init__(
        self,
        announcer: Announcer,
        core: AgentCore,
        store: KVStore,
        reconcile: float,
        restart_grace: float,
        peers: Mapping[str, str] | None = None,
        publish: Callable[[dict[str, str]], None] = lambda _: None,
    ) -> None:
        self.announcer = announcer
        self.core = core
        self.store = store
        self.reconcile = reconcile
        started = time.monotonic()
        self.unknown_until = started + core.timing.lease_ttl
        announcer.permitted = None
        announcer.keep_until = started + restart_grace
        announcer.fenced = self.fence
        self.peers = dict(peers or {})  # BGP peer name -> address
        self.publish = publish  # the node record's `bgp` (written when it changes)
        self.states: dict[str, str] = {}
        self.bfd: dict[str, str] = {}  # peer address -> BFD state, as last read
        self.established: set[str] = set()  # peers whose session was Established
        self._key = store.schema.announce(core.name)
        self._wake = asyncio.Event()

    def fence(self) -> bool | None:
        c = self.core
        return fenced(
            time.monotonic(),
            c.clock.deadline,
            c.failsafe_until,
            c.timing.fence_margin,
            self.unknown_until,
        )

    def announcing(self) -> frozenset[str]:
        """What a failsafe round asks the peers about (their answers' `holds` stay empty in
        BGP mode: nobody holds a floating address)."""
        return self.announcer.permitted or frozenset()

    async def run(self) -> None:
        watch = asyncio.create_task(self._watch(), name="announce-watch")
        try:
            await asyncio.gather(self._permission(), self._sessions(), self.announcer.run())
        finally:
            watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watch

    async def read(self) -> None:
        try:
            kv = await self.store.get(self._key)
        except StoreError as exc:
            log.debug("announce key not read; the last one stands", error=str(exc))
            return
        record = Announce() if kv is None else Announce.parse(kv.value, kv.mod_revision)
        if record is None:
            log.warning("announce key unreadable; the last one stands", key=self._key)
            return
        vips = frozenset(record.vips)
        if vips != self.announcer.permitted:
            log.info("permitted to announce", vips=sorted(vips))
            self.announcer.permitted = vips

    async def _permission(self) -> None:
        while True:
            self._wake.clear()
            await self.read()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.reconcile)

    async def _sessions(self) -> None:
        """Every reconcile period: BIRD's sessions and BFD, for the metrics at once and for the
        node record once they settled (`settled`)."""
        seen: dict[str, str] | None = None
        since = 0.0
        while self.peers:
            try:
                control = self.announcer.bird
                protocols = bird.protocols(await control.command("show protocols"))
                self.bfd = bird.bfd_sessions(await control.command("show bfd sessions"))
            except bird.BirdError as exc:
                log.debug("BIRD's sessions not read", error=str(exc))
                protocols, self.bfd = {}, {}
                states = {name: "BIRD unreachable" for name in self.peers}
            else:
                states = session_states(self.peers, protocols, self.bfd)
            self.established = {
                n for n, p in protocols.items() if p.kind == "BGP" and p.info == "Established"
            }
            now = time.monotonic()
            if states != seen:
                seen, since = states, now
            if settled(self.states, states, since, now):
                log.info("bgp sessions", sessions=states)
                self.states = states
                self.publish(states)
            await asyncio.sleep(self.reconcile)

    def register(self, registry: Registry) -> None:
        """`bgp_session_up{peer}`, `bfd_session_up{peer}`, `bgp_announced_vips` (routes in
        BIRD while the live link is up; 0 when the node withdraws)."""

        def sessions() -> list[Sample]:
            return [({"peer": n}, float(n in self.established)) for n in sorted(self.peers)]

        def bfd() -> list[Sample]:
            return [
                ({"peer": n}, float(self.bfd.get(a) == "Up")) for n, a in sorted(self.peers.items())
            ]

        def announced() -> list[Sample]:
            return [({}, float(len(self.announcer.announced)))]

        registry.gauge(
            "bgp_session_up", "1 while the BGP session to the peer is Established", sessions
        )
        registry.gauge("bfd_session_up", "1 while the BFD session to the peer is Up", bfd)
        registry.gauge("bgp_announced_vips", "VIP routes this node announces now", announced)

    async def _watch(self) -> None:
        while True:
            try:
                mine = self._key.removesuffix("vips")  # announce/<node>/: readable for us
                _, revision = await self.store.get_prefix(mine)
                async for event in self.store.watch(mine, revision + 1):
                    if event.key == self._key or event.kind == "resync":
                        self._wake.set()
            except StoreError:
                await asyncio.sleep(self.reconcile)
