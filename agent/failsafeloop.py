"""The failsafe's I/O around its pure core (`agent.failsafe`): membership, rounds, promises.

* membership: while etcd answers, `nodes/` is read every reconcile period; the node
  names and addresses last read are the peers a round asks (an outage keeps them).
* rounds: every keepalive period, when this node holds VIPs and no etcd call has
  succeeded for `failsafe_after`, every peer is asked at once over mutual TLS
  (`haproxy_py.cluster.peerlink`); a grant becomes a step for the actor
  (`AgentCore.failsafe_refresh`), so the core alone decides what is re-armed.
* promises: the peer endpoint (`agent.peer`) binds them to the core as they are made;
  when one ends, the core looks again (a VIP given meanwhile may be added).
* etcd returning ends the outage: it is logged with its duration, counted, and kept for
  the node record, which the controller turns into an event.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Awaitable, Callable, Iterable

import structlog

from agent.actions import Action
from agent.failsafe import Answer, Ask, BadMessage, Failsafe, Outage
from agent.peer import PeerServer
from agent.state import AgentCore
from haproxy_py.cluster.peerlink import PeerClient, PeerError, PeerTls
from haproxy_py.cluster.records import NodeRecord
from haproxy_py.cluster.store import StoreError
from haproxy_py.cluster.storeapi import KVStore
from haproxy_py.cluster.tasks import supervised
from haproxy_py.cluster.timing import failsafe_round
from haproxy_py.metrics import Registry, Sample

log = structlog.get_logger(__name__)

Step = Callable[[], Awaitable[list[Action]]]
ROUND_TIMES = 4096  # round durations kept for the figures logged when etcd returns
WARM = 5.0  # seconds between calls that keep the peers' connections open (theirs close at 15)
RETRY = 0.05  # seconds before a refused round is asked again: a fence period holds few rounds


def remembered(
    known: dict[str, str], read: dict[str, str], members: Iterable[str]
) -> dict[str, str]:
    """Each member's address as last read: one the latest read missed (a remembered
    member, `agent.failsafe.MEMBER_MEMORY`) is still asked where it was."""
    merged = {**known, **read}
    return {name: merged[name] for name in members if name in merged}


class FailsafeLoop:
    """One agent's failsafe: its peer endpoint, its rounds and its view of the membership."""

    def __init__(
        self,
        core: AgentCore,
        store: KVStore,
        tls: PeerTls,
        port: int,
        enabled: bool,
        reconcile: float,
        post: Callable[[Step], None],
        outage: Callable[[Outage], None],
    ) -> None:
        self.core = core
        self.store = store
        self.port = port
        self.reconcile = reconcile
        self.post = post
        self.outage = outage
        self.failsafe = Failsafe(core.name, core.timing, enabled)
        self.client = PeerClient(tls, failsafe_round(core.timing))
        self.server = PeerServer(core.name, tls, self.failsafe, core, self._promised)
        self.addresses: dict[str, str] = {}
        self.round_times: list[float] = []  # seconds each granting round took, this outage
        self._refused = False
        self._warmed: dict[str, float] = {}  # peer -> when its connection was last used
        # what a round asks about: the addresses held, or in BGP mode what is announced
        self.holding: Callable[[], Iterable[str]] = lambda: self.core.held

    def register(self, registry: Registry) -> None:
        """`failsafe_seconds`: how long the failsafe has kept this node's VIPs (0: it does
        not); `failsafe_rounds`: rounds that granted a refresh in the current outage."""

        def seconds() -> list[Sample]:
            since = self.failsafe.since
            return [({}, 0.0 if since is None else time.monotonic() - since)]

        def rounds() -> list[Sample]:
            return [({}, float(self.failsafe.rounds))]

        registry.gauge(
            "failsafe_seconds", "Seconds the failsafe has kept this node's VIPs", seconds
        )
        registry.gauge(
            "failsafe_rounds", "Failsafe rounds that granted a refresh, this outage", rounds
        )

    async def start(self, host: str) -> list[asyncio.Task[None]]:
        """Listen on host:port (OSError if that fails), then run the loops."""
        self.port = await self.server.start(host, self.port)
        log.info("peer endpoint listening", port=self.port, failsafe=self.failsafe.enabled)
        loops: list[tuple[str, Callable[[], Awaitable[None]]]] = [
            ("membership", self.membership_loop),
            ("failsafe", self.round_loop),
        ]
        return [asyncio.create_task(supervised(name, run), name=name) for name, run in loops]

    async def close(self) -> None:
        self.client.close()
        await self.server.close()

    async def serve(self, host: str) -> list[asyncio.Task[None]]:
        """`start`, with a bind failure logged: without the peer endpoint the node still
        serves, its VIPs then lasting only as long as its lease."""
        try:
            return await self.start(host)
        except OSError as exc:
            log.error("peer endpoint not started; no failsafe", error=exc.strerror, host=host)
            return []

    def etcd_ok(self) -> None:
        """An etcd call succeeded (hooked to the agent's etcd state)."""
        outage = self.failsafe.etcd_ok(time.monotonic())
        if outage is not None:
            times = sorted(self.round_times)
            log.warning(
                "etcd reachable again; the failsafe kept the VIPs meanwhile",
                seconds=round(outage.until - outage.since, 3),
                rounds=outage.rounds,
                round_ms_p50=round(times[len(times) // 2] * 1000, 1) if times else None,
                round_ms_max=round(times[-1] * 1000, 1) if times else None,
            )
            self.round_times.clear()
            self.outage(outage)

    def etcd_failed(self) -> None:
        """An etcd call failed (hooked to the agent's etcd state)."""
        self.failsafe.etcd_failed(time.monotonic())

    # --- membership -------------------------------------------------------------------------

    async def membership_loop(self) -> None:
        prefix = self.store.schema.nodes_prefix
        while True:
            if self.failsafe.reachable(time.monotonic()):
                try:
                    kvs, _ = await self.store.get_prefix(prefix)
                except StoreError:
                    pass  # keep the last membership seen
                else:
                    records = [NodeRecord.parse(kv.key[len(prefix) :], kv.value) for kv in kvs]
                    self.failsafe.membership(
                        (r.name for r in records if r is not None), time.monotonic()
                    )
                    read = {r.name: r.address for r in records if r and r.address}
                    self.addresses = remembered(self.addresses, read, self.failsafe.members)
                    await self._warm()
            await asyncio.sleep(self.reconcile)

    async def _warm(self) -> None:
        """Keep a checked TLS connection to every peer open (a small call every `WARM` s; at
        the next membership read to a peer just seen or whose last call failed), so the
        first round of an outage needs no handshake."""
        if not self.failsafe.enabled:
            return
        now = time.monotonic()
        self._warmed = {p: at for p, at in self._warmed.items() if p in self.failsafe.members}
        due = [
            peer
            for peer in sorted(self.failsafe.members)
            if peer in self.addresses and now - self._warmed.get(peer, -WARM) >= WARM
        ]
        calls = [
            self.client.post(self.addresses[peer], self.port, f"agent-{peer}", "/status", {})
            for peer in due
        ]
        outcomes = await asyncio.gather(*calls, return_exceptions=True)
        for peer, outcome in zip(due, outcomes, strict=True):
            if isinstance(outcome, PeerError):
                log.debug("peer not reachable for the failsafe", peer=peer, error=str(outcome))
            elif not isinstance(outcome, BaseException):
                self._warmed[peer] = now

    # --- rounds -----------------------------------------------------------------------------

    async def round_loop(self) -> None:
        """A round every keepalive period while etcd is out; a refused one is asked again
        after `RETRY`, since a peer whose etcd calls lag this node's says "reaches etcd" for
        up to a keepalive period, and the fence lapses after a few periods."""
        pause = self.core.timing.keepalive_interval
        while True:
            await asyncio.sleep(pause)
            pause = self.core.timing.keepalive_interval
            ask = self.failsafe.start(secrets.token_hex(16), self.holding(), time.monotonic())
            if ask is not None and not await self.run_round(ask):
                pause = RETRY

    async def run_round(self, ask: Ask) -> bool:
        """Ask every peer; True when the round granted a refresh."""
        sent = time.monotonic()
        peers = sorted(self.failsafe.members)
        answers = await asyncio.gather(*(self._ask(peer, ask) for peer in peers))
        grant = None
        for peer, answer in zip(peers, answers, strict=True):
            if isinstance(answer, str):
                self.failsafe.fail(f"{peer}: {answer}")
                break
            grant = self.failsafe.answered(peer, answer, time.monotonic()) or grant
        if grant is None:
            if not self._refused and self.failsafe.failed:
                log.warning(
                    "failsafe round refused; VIPs fence on their deadline", why=self.failsafe.failed
                )
            self._refused = True
            return False
        took = time.monotonic() - sent
        if len(self.round_times) < ROUND_TIMES:
            self.round_times.append(took)
        if self._refused or self.failsafe.rounds == 1:
            log.warning(
                "etcd unreachable; every peer vouched: VIPs kept (failsafe)",
                vips=sorted(grant.vips),
                round_ms=round(took * 1000, 1),
            )
        self._refused = False
        at, vips, promise = grant.sent, grant.vips, grant.promise

        async def step() -> list[Action]:
            return self.core.failsafe_refresh(at, promise, vips, time.monotonic())

        self.post(step)
        return True

    async def _ask(self, peer: str, ask: Ask) -> Answer | str:
        """The peer's answer, or why there is none."""
        address = self.addresses.get(peer)
        if address is None:
            return "no address known"
        try:
            body = await self.client.post(
                address, self.port, f"agent-{peer}", "/failsafe", ask.to_dict()
            )
            return Answer.from_dict(body)
        except (PeerError, BadMessage) as exc:
            return str(exc)

    # --- promises ---------------------------------------------------------------------------

    def _promised(self, until: float) -> None:
        """A promise binds until `until`: look again then, a VIP may be waiting."""

        async def step() -> list[Action]:
            self.core.arm_hold = self.failsafe.promised_until(time.monotonic())
            return self.core.converge(time.monotonic())

        delay = max(0.0, until - time.monotonic()) + 0.01
        asyncio.get_running_loop().call_later(delay, self.post, step)
