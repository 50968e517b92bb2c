"""The node side of BGP mode: what this node announces, reconciled level-triggered.

Rules (the pure core: `want`, `Liveness`, `routes`):

1. The node announces while it can serve: the proxy is live (its admin API
   answers 200), it does not drain, and the agent is not fenced. A refused
   probe or a drain counts at once; a timeout after `fall` misses in a row.
2. Which VIPs it may announce is given (by the controller: `agent.bgpside`);
   health never edits that list, it only opens or closes the live link.
3. Nothing here withdraws on its own when the agent stops: BIRD keeps what it
   was told, and the kernel withdraws for a dead proxy (`agent.livelink`).
4. A VIP that leaves the list while the node serves is a planned withdrawal
   (`routes`): announced with RFC 8326's GRACEFUL_SHUTDOWN while the node goes
   on serving its established connections on it, until they end or the drain
   timeout passes; only then are they told to go (1001 at a frame boundary),
   and the route goes once they closed (or `close_grace` later). A router
   that keeps the tagged path at the lowest weight in a resilient group (the
   lab's, `haproxy_py.lab.nhmirror`) keeps those flows on this node meanwhile.

The shell (`Announcer`) converges three things each tick, from what it reads,
never from what it remembers: the VIPs on `lo` as /32 (so the kernel accepts
their traffic, with no ARP on the shared segment), the announce file against
BIRD's `show static` (rewritten and `configure`d over the control socket only
when they differ), and the live link's admin state (netlink). While a VIP
leaves, it counts the kernel's open TCP connections to it (`open_connections`,
from /proc/net/tcp: what the router sees as flows). See
`haproxy_py.cluster.birdconf` for why these three levers and why BIRD.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import os
import sys
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
PROC_NET_TCP = Path("/proc/net/tcp")  # this network namespace's IPv4 TCP sockets
COUNT_EVERY = 1.0  # seconds between counts of a leaving VIP's connections


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


@dataclass(frozen=True)
class Drain:
    """A planned withdrawal's clock: GRACEFUL_SHUTDOWN for at least `hold` s (the router
    moves new connections away first); the connections left after `timeout` s are told
    1001; the route goes when none is open, or `close_grace` s after the 1001."""

    hold: float = 2.0
    timeout: float = 30.0
    close_grace: float = 2.0


@dataclass(frozen=True)
class Leaving:
    """One VIP's planned withdrawal: when it began, and when its connections were told 1001."""

    started: float
    closing: float | None = None


@dataclass(frozen=True)
class Routes:
    """What BIRD should announce: every VIP in `vips`, and those in `leaving` tagged
    GRACEFUL_SHUTDOWN (RFC 8326); `close`: leaving VIPs whose connections go now (1001)."""

    vips: frozenset[str]
    leaving: dict[str, Leaving]
    close: frozenset[str] = frozenset()


def routes(
    permitted: frozenset[str],
    loaded: frozenset[str],
    leaving: dict[str, Leaving],
    serving: bool,
    now: float,
    open_: dict[str, int] | None = None,
    drain: Drain = Drain(),
) -> Routes:
    """(pure) Rule 4, a planned withdrawal: a VIP BIRD announces that is no longer permitted
    while the node serves (an operator's drain, a VIP removed) stays announced, tagged
    GRACEFUL_SHUTDOWN, while `open_[vip]` connections remain and the drain timeout has not
    passed (at least `drain.hold`); from the timeout on, the connections open are told 1001
    (`close`, at every step: a client that reconnects may land here again while the router
    still sends this node a busy bucket), and the route goes once none is open or
    `close_grace` has passed. Not serving: nothing to be graceful about (the link is
    down)."""
    if not serving:
        return Routes(permitted, {})
    out = {v: t for v, t in leaving.items() if v not in permitted}
    for vip in loaded - permitted:
        out.setdefault(vip, Leaving(now))
    close = set()
    for vip, state in list(out.items()):
        busy = (open_ or {}).get(vip, 0) > 0
        if state.closing is None and busy and now - state.started >= drain.timeout:
            out[vip] = state = Leaving(state.started, now)
        if state.closing is not None and busy:
            close.add(vip)  # again each step: a client that reconnected into a bucket still ours
        closed = state.closing is not None and now - state.closing >= drain.close_grace
        if now - state.started >= drain.hold and (not busy or closed):
            del out[vip]
    return Routes(permitted, out, frozenset(close))


ESTABLISHED, CLOSE_WAIT = "01", "08"  # /proc/net/tcp states of a connection still open


def open_connections(proc_net_tcp: str, vips: frozenset[str]) -> dict[str, int]:
    """(pure) VIP -> TCP connections still open whose local address is the VIP, from the text
    of /proc/net/tcp (addresses there are the raw 32-bit value in this host's byte order)."""
    counts = dict.fromkeys(vips, 0)
    for line in proc_net_tcp.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 4 or fields[3] not in (ESTABLISHED, CLOSE_WAIT):
            continue
        raw = int(fields[1].partition(":")[0], 16).to_bytes(4, sys.byteorder)
        address = ".".join(str(b) for b in raw)
        if address in counts:
            counts[address] += 1
    return counts


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
    drain: Drain = Drain()


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
        self._leaving: dict[str, Leaving] = {}  # VIPs in a graceful shutdown
        self._tagged: frozenset[str] = frozenset()  # the VIPs written with the community
        self._counts: dict[str, int] = {}  # leaving VIP -> open connections, as last read
        self._counted_at = -math.inf
        self._closing: frozenset[str] = frozenset()  # leaving VIPs told 1001 at the last step
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
        draining = frozenset(self._leaving) | (loaded - vips)
        closing = any(state.closing is not None for state in self._leaving.values())
        counts = self.open_connections(draining, closing) if serve and draining else {}
        plan = routes(vips, loaded, self._leaving, serve, now, counts, self.settings.drain)
        starting = sorted(set(plan.leaving) - set(self._leaving))
        self._leaving = plan.leaving
        tagged = frozenset(plan.leaving)
        if starting:
            log.info("planned withdrawal: serving until its connections end", vips=starting)
        if loaded != plan.vips | tagged or tagged != self._tagged:
            path = self.settings.announce_file
            tmp = path.with_suffix(".tmp")
            tmp.write_text(birdconf.announce_file(plan.vips, self.settings.live_link, tagged))
            os.replace(tmp, path)
            self._tagged = tagged
            log.info(
                "bgp routes",
                was=sorted(loaded),
                now=sorted(plan.vips),
                graceful_shutdown=sorted(tagged),
                bird=await self.bird.configure(),
            )
        for vip in sorted(plan.close):  # the drain timeout passed: 1001 at a frame boundary
            answer = await self.proxy.drain_address(vip)
            if vip not in self._closing:
                log.info(
                    "planned withdrawal: drain timeout, connections told to go",
                    vip=vip,
                    still_open=counts.get(vip),
                    proxy=answer,
                )
        self._closing = plan.close

    def open_connections(self, vips: frozenset[str], fresh: bool) -> dict[str, int]:
        """The kernel's open TCP connections to each of `vips`, read at most once a second
        unless `fresh` (reading /proc/net/tcp grows with the node's sockets; `fresh` only in
        the few seconds of closing); unreadable: every VIP counted busy."""
        now = time.monotonic()
        if fresh or now - self._counted_at >= COUNT_EVERY or not vips <= set(self._counts):
            try:
                self._counts = open_connections(PROC_NET_TCP.read_text(), vips)
            except OSError as exc:
                log.warning("open connections not counted", error=str(exc))
                self._counts = dict.fromkeys(vips, 1)
            self._counted_at = now
        return self._counts

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
