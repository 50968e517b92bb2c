"""The node side of BGP mode: what this node announces, reconciled level-triggered.

Rules (the pure core: `want`, `Liveness`, `routes`):

1. The node announces while it can serve: the proxy is live (its admin API
   answers 200), it does not drain, and the agent is not fenced. A refused
   probe or a drain counts at once; a timeout after `fall` misses in a row.
2. Which VIPs it may announce is given (by the controller: `agent.bgpside`);
   health never edits that list, it only opens or closes the live link.
3. Nothing here withdraws on its own when the agent stops: BIRD keeps what it
   was told, and the kernel withdraws for a dead proxy (`agent.livelink`).
4. A VIP that leaves the list while the node serves is a planned withdrawal:
   announced with RFC 8326's GRACEFUL_SHUTDOWN for `GRACEFUL_HOLD` first
   (`routes`), its WebSockets told to go (1001) when that starts.

The shell (`Announcer`) converges three things each tick, from what it reads,
never from what it remembers: the VIPs on `lo` as /32 (so the kernel accepts
their traffic, with no ARP on the shared segment), the announce file against
BIRD's `show static` (rewritten and `configure`d over the control socket only
when they differ), and the live link's admin state (netlink). See
`haproxy_py.cluster.birdconf` for why these three levers and why BIRD.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import structlog
from pyroute2 import AsyncIPRoute
from pyroute2.netlink.exceptions import NetlinkError

from agent.proxy import ProxyClient, ProxyStatus
from haproxy_py.cluster import bird, birdconf

log = structlog.get_logger(__name__)
LOOPBACK = 1  # `lo` is interface 1 in every network namespace


@dataclass(frozen=True)
class Want:
    """What the node should show its BGP peers: the live link's state, the VIP routes, why."""

    serve: bool
    vips: frozenset[str]
    reason: str


def want(permitted: Iterable[str], live: bool, draining: bool, fenced: bool) -> Want:
    """(pure: no I/O, no clock) Rule 1 and 2: the routes are the permitted VIPs; the link is
    up only while the node can serve."""
    vips = frozenset(permitted)
    if fenced:
        return Want(False, vips, "fenced: the agent lost its lease, must not serve")
    if not live:
        return Want(False, vips, "proxy is not live, must be to announce")
    if draining:
        return Want(False, vips, "proxy drains, withdrawn")
    return Want(True, vips, f"proxy live: announcing {len(vips)} VIP(s)")


GRACEFUL_HOLD = 2.0  # seconds a planned withdrawal announces GRACEFUL_SHUTDOWN first


@dataclass(frozen=True)
class Routes:
    """What BIRD should announce: every VIP in `vips`, those in `leaving` tagged
    GRACEFUL_SHUTDOWN (RFC 8326); `started` maps each leaving VIP to when its shutdown began."""

    vips: frozenset[str]
    leaving: frozenset[str]
    started: dict[str, float]


def routes(
    permitted: frozenset[str],
    loaded: frozenset[str],
    started: dict[str, float],
    serving: bool,
    now: float,
    hold: float = GRACEFUL_HOLD,
) -> Routes:
    """(pure) Rule 4, a planned withdrawal: a VIP BIRD announces that is no longer permitted
    while the node serves (an operator's drain, a VIP removed) first stays announced for
    `hold` seconds tagged GRACEFUL_SHUTDOWN, so the router moves new connections away
    before the path goes. Not serving: nothing to be graceful about (the link is down)."""
    if not serving:
        return Routes(permitted, frozenset(), {})
    kept = {v: t for v, t in started.items() if v not in permitted}
    for vip in loaded - permitted:
        kept.setdefault(vip, now)
    kept = {v: t for v, t in kept.items() if now - t < hold}
    return Routes(permitted, frozenset(kept), kept)


class Liveness:
    """(pure: no I/O, no clock) Probe results -> live, by rule 1's counting."""

    def __init__(self, fall: int) -> None:
        self.fall = fall
        self.misses = 0
        self.live = False
        self.draining = False
        self.known = False  # a restarted agent touches nothing until it knows (rule 3)

    def observe(self, status: ProxyStatus) -> bool:
        if status.live:
            self.misses, self.live = 0, True
            self.draining = bool(status.draining)
        elif status.refused or status.draining:
            self.misses, self.live = self.fall, False
            self.draining = bool(status.draining)
        else:
            self.misses += 1
            self.live = self.live and self.misses < self.fall
        self.known = self.known or status.live or self.misses >= self.fall
        return self.live


@dataclass(frozen=True)
class Settings:
    bird_socket: str
    announce_file: Path
    live_link: str
    interval: float = 0.1
    timeout: float = 0.2
    fall: int = 3


class Announcer:
    """The I/O shell: probe the proxy, then converge lo, BIRD and the live link."""

    def __init__(self, settings: Settings, ipr: AsyncIPRoute, proxy: ProxyClient) -> None:
        self.settings = settings
        self.ipr = ipr
        self.proxy = proxy
        self.bird = bird.BirdControl(settings.bird_socket)
        self.liveness = Liveness(settings.fall)
        # The seams `agent.bgpside` sets: the controller's answer for this node (None: not read
        # yet, BIRD's routes are left as they are) and the lease/failsafe verdict (None: not
        # known yet, the link is left as it is).
        self.permitted: frozenset[str] | None = None
        self.fenced: Callable[[], bool | None] = lambda: None
        # Until then (monotonic), VIPs BIRD already announces stay in its routes even when
        # `permitted` leaves them out: a restarted agent's node is re-registered and its
        # controller's answer settles meanwhile.
        self.keep_until = -math.inf
        self._leaving: dict[str, float] = {}  # VIP -> when its graceful shutdown began
        self._tagged: frozenset[str] = frozenset()  # the VIPs written with the community
        self.loaded: frozenset[str] = frozenset()  # BIRD's VIP routes, as last read
        self.link_up = False  # as last set or seen
        self._reason = ""
        self._lock = asyncio.Lock()

    async def run(self) -> None:
        """Start a probe every `interval`, whether or not the previous one answered, so a hung
        proxy is withdrawn about `timeout` + (`fall` - 1) x `interval` after it hung (0.4 s by
        default); an answer older than one already counted is ignored."""
        newest = 0
        pending: set[asyncio.Task[None]] = set()

        async def probe(seq: int) -> None:
            nonlocal newest
            status = await self.proxy.probe()
            async with self._lock:
                if seq < newest:
                    return
                newest = seq
                try:
                    await self.step(status)
                except Exception:  # a bug must not stop the announcer; the next probe retries
                    log.exception("bgp step failed")

        for seq in itertools.count(1):
            task = asyncio.create_task(probe(seq))
            pending.add(task)
            task.add_done_callback(pending.discard)
            await asyncio.sleep(self.settings.interval)

    async def step(self, status: ProxyStatus) -> Want:
        self.liveness.observe(status)
        fenced = self.fenced()
        permitted = self.permitted
        target = want(permitted or (), self.liveness.live, self.liveness.draining, bool(fenced))
        if target.reason != self._reason:
            log.info("bgp", reason=target.reason, detail=status.detail)
            self._reason = target.reason
        steps = []
        if permitted is not None:
            steps += [
                ("VIPs on lo", self.ensure_loopback(target.vips)),
                ("BIRD's routes", self.ensure_routes(target.vips, target.serve)),
            ]
        if self.liveness.known and fenced is not None:
            steps.append(("live link", self.ensure_link(target.serve)))
        for what, call in steps:
            try:
                await call
            except (bird.BirdError, NetlinkError, OSError) as exc:
                log.warning("bgp converge failed", what=what, error=str(exc))
        return target

    @property
    def announced(self) -> frozenset[str]:
        """What the router sees from this node now (as last read and set)."""
        return self.loaded if self.link_up else frozenset()

    async def ensure_loopback(self, vips: frozenset[str]) -> None:
        present = set()
        async for msg in await self.ipr.addr("dump", index=LOOPBACK):
            if msg.get("prefixlen") == 32:
                present.add(msg.get("address"))
        for vip in sorted(vips - present):
            await self.ipr.addr("replace", index=LOOPBACK, address=vip, prefixlen=32)

    async def ensure_routes(self, vips: frozenset[str], serve: bool) -> None:
        reply = await self.bird.command(f"show static {birdconf.STATIC_PROTOCOL}")
        loaded = frozenset(p.removesuffix("/32") for p in bird.static_routes(reply))
        self.loaded = loaded
        now = time.monotonic()
        if now < self.keep_until:
            vips |= loaded
        plan = routes(vips, loaded, self._leaving, serve, now)
        starting = sorted(plan.leaving - set(self._leaving))
        self._leaving = plan.started
        if loaded == plan.vips | plan.leaving and plan.leaving == self._tagged:
            return
        path = self.settings.announce_file
        tmp = path.with_suffix(".tmp")
        tmp.write_text(birdconf.announce_file(plan.vips, self.settings.live_link, plan.leaving))
        os.replace(tmp, path)
        self._tagged = plan.leaving
        log.info(
            "bgp routes",
            was=sorted(loaded),
            now=sorted(plan.vips),
            graceful_shutdown=sorted(plan.leaving),
            bird=await self.bird.configure(),
        )
        for vip in starting:  # its clients go now, and come back through the router's new choice
            log.info(
                "planned withdrawal: WebSockets told to go",
                vip=vip,
                proxy=await self.proxy.drain_address(vip),
            )

    async def ensure_link(self, up: bool) -> None:
        async for link in await self.ipr.link("dump"):
            if link.get("ifname") != self.settings.live_link:
                continue
            is_up = bool(link["flags"] & 1)  # IFF_UP
            if is_up != up:
                await self.ipr.link("set", index=link["index"], state="up" if up else "down")
            self.link_up = up
            return
        self.link_up = False
        # No link: the proxy is not running under agent.livelink; nothing can be announced.
