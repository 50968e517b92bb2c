"""The failsafe: a holder keeps its VIPs through an etcd outage only while every peer vouches.

Pure (no I/O, no clock): the wiring (`agent.failsafeloop`) feeds it etcd successes,
the membership it last read from etcd, and the peers' answers, and applies the
grants it returns to the core (`AgentCore.failsafe_refresh`).

The rule (Patroni's `failsafe_mode`, made safe for addresses): while a holder
cannot reach etcd it may refresh the fence of the VIPs it holds only when, in
one round, **every** node it read registered in etcd in the last `MEMBER_MEMORY`
seconds answers, directly and authenticated (`agent.peer`: mutual TLS, the
certificate's name checked), that

* it cannot reach etcd either,
* it holds none of these VIPs, and
* it arms no VIP until its promise ends (`timing.failsafe_promise`) or the
  holder asks again.

One unreachable, slow or disagreeing peer, or one that reaches etcd, and the
round grants nothing: the holder fences on its normal deadline. A round never
fences early either, it only fails to refresh. No peers at all (one node): no
failsafe, since nobody would vouch.

Why it is safe: the grant counts the promise from when the holder *sent* the
round, before any peer received it, and the holder's core re-arms only while
`now + address_lifetime + kernel_slack <= sent + promise - fence_margin`; so the
refreshed fence falls before the earliest promise ends. A peer that reaches etcd
again may be given the VIP there (the holder's lease may have expired), but it
arms nothing before its promise ends. Durations are compared, never clock
readings of two hosts. Each answer names its round (a random nonce), the holder
and the peer, and the peer's name is also the one its certificate proves: an
answer replayed from an earlier round, or meant for another holder, is
rejected.

The failsafe keeps a working holder; it never elects a new one.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from haproxy_py.cluster.timing import Timing, failsafe_after, failsafe_promise, failsafe_round

NONCE_MAX = 64  # characters of a round's nonce
VIPS_MAX = 64  # VIPs named in one message: keeps every message small and bounded
NAME_MAX = 63  # a node name (pki's certificate name limit)
# A node stays a member this long after it was last read registered: a peer re-registering
# under a new lease (its record briefly gone) when etcd fails must still be asked to vouch.
MEMBER_MEMORY = 10.0


class BadMessage(ValueError):
    """A peer message that is not what the protocol allows; the text says what."""


def _text(obj: Mapping[str, Any], key: str, limit: int) -> str:
    value = obj.get(key)
    if not isinstance(value, str) or not value or len(value) > limit:
        raise BadMessage(f"{key}: expected a non-empty string of at most {limit} characters")
    return value


def _vips(obj: Mapping[str, Any], key: str) -> tuple[str, ...]:
    value = obj.get(key)
    if not isinstance(value, list) or len(value) > VIPS_MAX:
        raise BadMessage(f"{key}: expected a list of at most {VIPS_MAX} addresses")
    return tuple(_text({"vip": v}, "vip", 45) for v in value)


@dataclass(frozen=True)
class Ask:
    """A holder's question to one peer in one round."""

    round: str
    holder: str
    vips: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"round": self.round, "holder": self.holder, "vips": list(self.vips)}

    @classmethod
    def from_dict(cls, obj: object) -> Ask:
        if not isinstance(obj, dict):
            raise BadMessage("expected a JSON object")
        return cls(
            _text(obj, "round", NONCE_MAX), _text(obj, "holder", NAME_MAX), _vips(obj, "vips")
        )


@dataclass(frozen=True)
class Answer:
    """A peer's answer: whether it reaches etcd, which of the asked VIPs it holds, and how
    long (seconds from when it received the question) it promises to arm no VIP (0: none)."""

    round: str
    holder: str
    peer: str
    etcd: bool
    holds: tuple[str, ...]
    promise: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "round": self.round,
            "holder": self.holder,
            "peer": self.peer,
            "etcd": self.etcd,
            "holds": list(self.holds),
            "promise": self.promise,
        }

    @classmethod
    def from_dict(cls, obj: object) -> Answer:
        if not isinstance(obj, dict):
            raise BadMessage("expected a JSON object")
        etcd, promise = obj.get("etcd"), obj.get("promise")
        if not isinstance(etcd, bool):
            raise BadMessage("etcd: expected true or false")
        if not isinstance(promise, int | float) or not 0 <= promise <= 3600:
            raise BadMessage("promise: expected seconds from 0 to 3600")
        return cls(
            _text(obj, "round", NONCE_MAX),
            _text(obj, "holder", NAME_MAX),
            _text(obj, "peer", NAME_MAX),
            etcd,
            _vips(obj, "holds"),
            float(promise),
        )


@dataclass(frozen=True)
class Grant:
    """Every peer vouched: the core may refresh these held VIPs while their fence falls
    `fence_margin` before `sent + promise`."""

    sent: float
    promise: float
    vips: frozenset[str]


@dataclass(frozen=True)
class Outage:
    """etcd answered again after the failsafe kept VIPs: from when, until when, how many
    rounds granted a refresh."""

    since: float
    until: float
    rounds: int


@dataclass
class Round:
    nonce: str
    sent: float
    vips: frozenset[str]
    peers: frozenset[str]
    promise: float = math.inf
    vouched: set[str] = field(default_factory=set)


@dataclass
class Failsafe:
    """One node's failsafe, both as a holder (rounds) and as a peer (answers, promises)."""

    name: str
    timing: Timing
    enabled: bool = True
    seen: dict[str, float] = field(default_factory=dict)  # node -> when last read registered
    last_ok: float = -math.inf  # the last time an etcd call succeeded
    last_failed: float = -math.inf  # the last time one failed
    promised: dict[str, float] = field(default_factory=dict)  # holder -> promise ends
    round: Round | None = None
    since: float | None = None  # first refresh granted in this outage
    rounds: int = 0  # rounds that granted a refresh in this outage
    failed: str | None = None  # why the last round granted nothing

    # --- etcd and the membership --------------------------------------------------------------

    def etcd_ok(self, now: float) -> Outage | None:
        """An etcd call succeeded: the outage is over (reported once, if VIPs were kept)."""
        self.last_ok = max(self.last_ok, now)
        self.round = None
        if self.since is None:
            return None
        outage = Outage(self.since, now, self.rounds)
        self.since, self.rounds = None, 0
        return outage

    def etcd_failed(self, now: float) -> None:
        """An etcd call failed (every endpoint tried)."""
        self.last_failed = max(self.last_failed, now)

    def reachable(self, now: float) -> bool:
        return now - self.last_ok <= failsafe_after(self.timing)

    def reaches_etcd(self, now: float) -> bool:
        """What a peer answers: reachable, and its latest call did not fail. A peer whose
        calls lag the holder's would otherwise say "reaches etcd" for up to a keepalive
        period after etcd went away; either way it promises only what `ask` says."""
        return self.reachable(now) and self.last_failed <= self.last_ok

    def membership(self, names: Iterable[str], now: float) -> None:
        """The nodes registered in etcd as read at `now` (this node left out), with those
        read within `MEMBER_MEMORY`: one more member only adds a voucher a round needs,
        and a promise a peer gives, so remembering is never less safe than forgetting."""
        self.seen.update(dict.fromkeys(names, now))
        self.seen = {n: t for n, t in self.seen.items() if now - t <= MEMBER_MEMORY}

    @property
    def members(self) -> frozenset[str]:
        """The other nodes registered in recent reads (`membership`)."""
        return frozenset(self.seen) - {self.name}

    # --- the holder's side --------------------------------------------------------------------

    def start(self, nonce: str, held: Iterable[str], now: float) -> Ask | None:
        """A new round about the VIPs held, or None when none is needed or possible."""
        vips = frozenset(held)
        if not self.enabled or self.reachable(now) or not vips or not self.members:
            self.round = None
            return None
        self.round = Round(nonce, now, vips, self.members)
        return Ask(nonce, self.name, tuple(sorted(vips))[:VIPS_MAX])

    def answered(self, peer: str, answer: Answer, now: float) -> Grant | None:
        """`peer` (the name its certificate proves) answered: a grant once every peer has
        vouched within the round. A reply to another round, holder or peer is ignored; a
        late or disagreeing one fails the round."""
        r = self.round
        if r is None or answer.round != r.nonce or answer.holder != self.name:
            return None  # replayed, or meant for another round or holder
        if answer.peer != peer or peer not in r.peers:
            return None  # not who the certificate says, or not a member
        why = self._objection(answer, r, now)
        if why is not None:
            self.fail(f"{peer}: {why}")
            return None
        r.vouched.add(peer)
        r.promise = min(r.promise, answer.promise)
        if r.vouched != r.peers:
            return None
        self.round = None
        self.failed = None
        if self.since is None:
            self.since = now
        self.rounds += 1
        return Grant(r.sent, r.promise, r.vips)

    def fail(self, why: str) -> None:
        """The round grants nothing (a peer did not answer, or objected)."""
        self.round = None
        self.failed = why

    def _objection(self, answer: Answer, r: Round, now: float) -> str | None:
        if now - r.sent > failsafe_round(self.timing):
            return "answered too late"
        if answer.etcd:
            return "reaches etcd"
        if set(answer.holds) & r.vips:
            return f"holds {', '.join(sorted(set(answer.holds) & r.vips))}"
        if answer.promise < failsafe_promise(self.timing):
            return f"promised {answer.promise:g} s, less than {failsafe_promise(self.timing):g} s"
        return None

    # --- the peer's side ----------------------------------------------------------------------

    def ask(self, asker: str, ask: Ask, holding: Iterable[str], now: float) -> Answer:
        """Answer a holder (`asker`: the name its certificate proves). Promises only when
        this node cannot reach etcd and holds none of the VIPs; an answer that does not
        vouch promises nothing (the holder fences anyway)."""
        if ask.holder != asker:
            raise BadMessage(f"holder {ask.holder!r} asked with the certificate of {asker!r}")
        if asker not in self.members:
            raise BadMessage(f"{asker!r} is not in the membership this node last saw")
        holds = tuple(sorted(set(holding) & set(ask.vips)))
        etcd = self.reaches_etcd(now) or not self.enabled
        promise = 0.0
        if not etcd and not holds:
            promise = failsafe_promise(self.timing)
            self.promised[asker] = max(self.promised.get(asker, -math.inf), now + promise)
        return Answer(ask.round, ask.holder, self.name, etcd, holds, promise)

    def promised_until(self, now: float) -> float:
        """Until when this node arms no VIP (-inf: no promise runs)."""
        self.promised = {h: end for h, end in self.promised.items() if end > now}
        return max(self.promised.values(), default=-math.inf)
