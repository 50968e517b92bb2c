"""Typed records stored in etcd, their JSON form, and parsers that never raise.

Every value is a JSON object. Writers use `to_json()`; readers use `parse()`
(or `ClusterView.from_kvs`), which returns None for a value that is not a
usable record: etcd may hold anything an operator or an older version wrote,
and one bad key must not stop a daemon. Unknown JSON fields are ignored and
missing optional fields take their defaults, so versions can mix.

Fields filled from etcd's own metadata (`mod_revision`, and `lease` where the
key is leased) are not part of the JSON; they come from the key-value pair.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Literal

from haproxy_py.cluster.controlkeys import MODES, ClusterPolicy, ControllerLeader, Mode
from haproxy_py.cluster.intents import (
    CAUSES,
    FINAL_STATUSES,
    REQUEST_KINDS,
    RESULT_STATUSES,
    Cause,
    Event,
    Move,
    Request,
    RequestKind,
    RequestResult,
    ResultStatus,
)
from haproxy_py.cluster.jsonvalue import (
    choice,
    dumps,
    flag,
    integer,
    loads,
    number,
    revisions,
    text,
    texts,
)
from haproxy_py.cluster.schema import Schema

__all__ = [
    "CAUSES",
    "FINAL_STATUSES",
    "MODES",
    "REQUEST_KINDS",
    "RESULT_STATUSES",
    "VIP_STATES",
    "Cause",
    "ClusterPolicy",
    "ClusterView",
    "ControllerLeader",
    "Event",
    "KeyValue",
    "Mode",
    "Move",
    "NodeRecord",
    "Request",
    "RequestKind",
    "RequestResult",
    "ResultStatus",
    "VipAssignment",
    "VipState",
    "dumps",
    "parse_epoch",
    "vip_order",
]

VipState = Literal["assigned", "releasing"]
VIP_STATES: tuple[VipState, ...] = ("assigned", "releasing")


@dataclass(frozen=True)
class KeyValue:
    """One etcd key as read, with the metadata compare-and-set needs."""

    key: str
    value: bytes
    create_revision: int
    mod_revision: int
    lease: int = 0


@dataclass(frozen=True)
class NodeRecord:
    """`nodes/<node>`: a registered proxy node, written by its agent under its own lease.

    `healthy` is liveness (the proxy answers and accepts); `ready` of `pools`
    is readiness (backend pools with a server up), the score the controller
    compares before it moves a VIP for readiness. `unheld` lists VIPs assigned
    here that the agent could not hold for longer than an address lifetime.
    `stopping`: the agent is handing its VIPs over before it exits; the node
    takes none meanwhile.
    `released` maps a VIP to the `vips/<vip>` mod revision whose assignment this
    node has let go of (the kernel showed the address gone): the release
    acknowledgement, which the controller answers by giving the VIP to its next
    owner in one transaction. `refused` lists VIPs assigned here that the node's
    own `allowed_vips` does not allow; it never holds those.
    `healthy_since` is when the proxy last turned healthy (unix time); the
    controller's failback hold-down reads it, so it must not move while health
    stays up. `lease` comes from the key's lease, not from the JSON.
    """

    name: str
    address: str | None = None
    interface: str | None = None
    priority: int = 100
    version: str | None = None
    healthy: bool = False
    healthy_since: float | None = None
    backends_up: int = 0
    backends_total: int = 0
    vips: tuple[str, ...] = ()
    updated: float | None = None
    lease: int = 0
    mod_revision: int = 0
    ready: int = 0
    pools: int = 0
    unheld: tuple[str, ...] = ()
    stopping: bool = False
    released: Mapping[str, int] = field(default_factory=dict)
    refused: tuple[str, ...] = ()
    # The last etcd outage through which the failsafe kept this node's VIPs: (since, until,
    # rounds), unix times; written when etcd answers again (`agent.failsafeloop`).
    failsafe: tuple[float, float, int] | None = None
    # BGP mode: peer name -> its session and BFD state, e.g. "Established, BFD Up" (written
    # only when one changes: `agent.bgpside`)
    bgp: Mapping[str, str] = field(default_factory=dict)
    # The agent gives this lease up itself this many seconds after its last renewed keepalive
    # (0: only when etcd ends it); the controller's expiry proof relies on it
    # (`haproxy_py.cluster.timing`, lapse path).
    lapse: int = 0

    def to_json(self) -> bytes:
        return dumps(
            {
                "name": self.name,
                "address": self.address,
                "interface": self.interface,
                "priority": self.priority,
                "version": self.version,
                "healthy": self.healthy,
                "healthy_since": self.healthy_since,
                "backends_up": self.backends_up,
                "backends_total": self.backends_total,
                "vips": list(self.vips),
                "updated": self.updated,
                "ready": self.ready,
                "pools": self.pools,
                "unheld": list(self.unheld),
                "stopping": self.stopping,
                "released": dict(sorted(self.released.items())),
                "refused": list(self.refused),
                **({} if self.failsafe is None else {"failsafe": _spell(self.failsafe)}),
                **({"bgp": dict(sorted(self.bgp.items()))} if self.bgp else {}),
                **({"lapse": self.lapse} if self.lapse else {}),
            }
        )

    @classmethod
    def parse(
        cls, name: str, raw: bytes, lease: int = 0, mod_revision: int = 0
    ) -> NodeRecord | None:
        obj = loads(raw)
        if obj is None:
            return None
        return cls(
            name=name,
            address=text(obj, "address"),
            interface=text(obj, "interface"),
            priority=integer(obj, "priority", 100),
            version=text(obj, "version"),
            healthy=flag(obj, "healthy"),
            healthy_since=number(obj, "healthy_since"),
            backends_up=integer(obj, "backends_up"),
            backends_total=integer(obj, "backends_total"),
            vips=texts(obj, "vips"),
            updated=number(obj, "updated"),
            lease=lease,
            mod_revision=mod_revision,
            ready=integer(obj, "ready"),
            pools=integer(obj, "pools"),
            unheld=texts(obj, "unheld"),
            stopping=flag(obj, "stopping"),
            released=revisions(obj, "released"),
            refused=texts(obj, "refused"),
            failsafe=_parse_spell(obj.get("failsafe")),
            bgp=_states(obj.get("bgp")),
            lapse=integer(obj, "lapse"),
        )


def _states(value: object) -> dict[str, str]:
    if not isinstance(value, dict):
        return {}
    return {k: v for k, v in value.items() if isinstance(k, str) and isinstance(v, str)}


def _spell(spell: tuple[float, float, int]) -> dict[str, float | int]:
    return {"since": spell[0], "until": spell[1], "rounds": spell[2]}


def _parse_spell(obj: object) -> tuple[float, float, int] | None:
    if not isinstance(obj, dict):
        return None
    since, until = number(obj, "since"), number(obj, "until")
    if since is None or until is None:
        return None
    return since, until, integer(obj, "rounds")


@dataclass(frozen=True)
class VipAssignment:
    """`vips/<vip>`: who owns a VIP, written by the controller only (agents may only read it).

    `lease` is the owner's lease when the VIP was given to it, stored in the
    JSON, not bound to the key: an agent holds the VIP only while that lease
    is its current one, and once that lease is gone the key is stale and the
    controller gives the VIP to another node (keys of older versions, bound to
    the lease, read the same: their etcd lease fills in).
    `state` is `assigned` (the owner holds the address) or `releasing` (the
    controller asked the owner to let go; the owner removes the address and then
    acknowledges in its node record's `released`).
    `move_to` and `request` say where a planned move goes and which request asked;
    `releasing_since` is when the release was asked (the controller gives up and
    restores `assigned` after its release timeout).
    """

    vip: str
    node: str
    epoch: int
    since: float
    state: VipState = "assigned"
    cause: Cause = "initial"
    move_to: str | None = None
    request: str | None = None
    releasing_since: float | None = None
    lease: int = 0
    mod_revision: int = 0

    def to_json(self) -> bytes:
        return dumps(
            {
                "vip": self.vip,
                "node": self.node,
                "epoch": self.epoch,
                "since": self.since,
                "state": self.state,
                "cause": self.cause,
                "move_to": self.move_to,
                "request": self.request,
                "releasing_since": self.releasing_since,
                "lease": self.lease,
            }
        )

    @classmethod
    def parse(
        cls, vip: str, raw: bytes, lease: int = 0, mod_revision: int = 0
    ) -> VipAssignment | None:
        obj = loads(raw)
        if obj is None:
            return None
        node = text(obj, "node")
        state = choice(obj, "state", VIP_STATES)
        if node is None or state is None:
            return None
        return cls(
            vip=vip,
            node=node,
            epoch=integer(obj, "epoch"),
            since=number(obj, "since", 0.0) or 0.0,
            state=state,
            cause=choice(obj, "cause", CAUSES) or "initial",
            move_to=text(obj, "move_to"),
            request=text(obj, "request"),
            releasing_since=number(obj, "releasing_since"),
            lease=integer(obj, "lease") or lease,
            mod_revision=mod_revision,
        )


def vip_order(vips: Iterable[str]) -> list[str]:
    """VIPs in numeric address order (junk sorts last, by text)."""

    def key(vip: str) -> tuple[int, int, str]:
        try:
            return (0, int(ipaddress.ip_address(vip)), vip)
        except ValueError:
            return (1, 0, vip)

    return sorted(vips, key=key)


def parse_epoch(raw: bytes) -> int:
    """The `epoch` key is a bare decimal integer; anything else reads as 0."""
    try:
        value = int(raw.decode().strip())
    except (ValueError, UnicodeDecodeError):
        return 0
    return max(value, 0)


@dataclass(frozen=True)
class ClusterView:
    """One consistent snapshot of a cluster, read with a single range request.

    `revision` is etcd's revision at the read; watching from `revision + 1`
    sees every later change. `problems` lists keys that could not be parsed
    (they are otherwise ignored, except an unreadable `vips/<vip>`, which stays
    in `occupied` so that nobody assigns over it). `vacated` (see `vacate`) holds
    the assignments whose key stays but whom nobody holds any more.
    """

    cluster: str
    revision: int
    nodes: Mapping[str, NodeRecord] = field(default_factory=dict)
    vips: Mapping[str, VipAssignment] = field(default_factory=dict)
    occupied: frozenset[str] = frozenset()
    leader: ControllerLeader | None = None
    settings: ClusterPolicy | None = None
    requests: tuple[Request, ...] = ()
    events: tuple[Event, ...] = ()
    epoch: int = 0
    epoch_mod_revision: int = 0
    problems: tuple[str, ...] = ()
    config_mod_revision: int = 0  # of the `config` key, readable or not (0: absent)
    vacated: Mapping[str, VipAssignment] = field(default_factory=dict)
    # leases with a `revoked/` marker -> the embargo its writer asks for (`controller.embargo`)
    revoked: Mapping[int, float] = field(default_factory=dict)
    # VIPs of a revoked lease kept from assignment until its fence has fallen (`controller.embargo`)
    embargoed: frozenset[str] = frozenset()

    def owner(self, vip: str) -> str | None:
        assignment = self.vips.get(vip)
        return assignment.node if assignment else None

    def vips_of(self, node: str) -> tuple[str, ...]:
        return tuple(sorted(v for v, a in self.vips.items() if a.node == node))

    def known_nodes(self) -> frozenset[str]:
        """Registered nodes, and drained ones that may no longer be registered."""
        drained = self.settings.drained if self.settings else ()
        return frozenset(self.nodes) | frozenset(drained)

    def known_vips(self) -> frozenset[str]:
        """Configured VIPs, and every VIP with a key (readable or not)."""
        configured = self.settings.vips if self.settings else ()
        return self.occupied | frozenset(configured)

    def acknowledged(self, vip: str) -> bool:
        """The owner's node record acknowledges it let go of this very assignment."""
        a = self.vips.get(vip)
        owner = self.nodes.get(a.node) if a else None
        return a is not None and owner is not None and owner.released.get(vip) == a.mod_revision

    def stale(self, vip: str) -> bool:
        """The assignment's lease is not its owner's registered lease: the owner's lease is
        gone (its record went with it) or it never had one, so nobody holds it any more
        (the controller confirms the lease is gone before it acts on that)."""
        a = self.vips.get(vip)
        if a is None:
            return False
        owner = self.nodes.get(a.node)
        return a.lease == 0 or owner is None or owner.lease != a.lease

    def free(self, vip: str) -> bool:
        """Nobody holds the VIP: no key, or a key whose owner let go or whose lease is gone.
        An unreadable key is never free: nobody assigns over what it cannot read."""
        if vip not in self.occupied:
            return True
        return vip in self.vips and (self.acknowledged(vip) or self.stale(vip))

    def vacate(self, vips: Iterable[str]) -> ClusterView:
        """This view with `vips` unowned: what the decision core sees, so a VIP let go of is
        placed like one whose key is gone; the assignment that follows replaces the key in
        one transaction (compare on its mod revision, kept in `vacated`)."""
        gone = {v: self.vips[v] for v in vips if v in self.vips}
        if not gone:
            return self
        return replace(
            self,
            vips={v: a for v, a in self.vips.items() if v not in gone},
            occupied=self.occupied - frozenset(gone),
            vacated={**self.vacated, **gone},
        )

    def last_event(self, vip: str) -> Event | None:
        for event in reversed(self.events):
            if event.vip == vip:
                return event
        return None

    @classmethod
    def from_kvs(cls, schema: Schema, kvs: list[KeyValue], revision: int) -> ClusterView:
        """The view of `schema`'s cluster; keys of other clusters are skipped."""
        nodes: dict[str, NodeRecord] = {}
        vips: dict[str, VipAssignment] = {}
        occupied: set[str] = set()
        requests: list[Request] = []
        events: list[Event] = []
        problems: list[str] = []
        leader: ControllerLeader | None = None
        settings: ClusterPolicy | None = None
        epoch = epoch_rev = config_rev = 0
        revoked: dict[int, float] = {}
        for kv in kvs:
            rel = schema.relative(kv.key)
            if rel is None:
                continue
            section, _, name = rel.partition("/")
            parsed: object | None = None
            if section == "nodes" and name:
                parsed = NodeRecord.parse(name, kv.value, kv.lease, kv.mod_revision)
                if parsed is not None:
                    nodes[name] = parsed
            elif section == "vips" and name:
                occupied.add(name)
                parsed = VipAssignment.parse(name, kv.value, kv.lease, kv.mod_revision)
                if parsed is not None:
                    vips[name] = parsed
            elif section == "requests" and name:
                parsed = Request.parse(name, kv.value, kv.mod_revision)
                if parsed is not None:
                    requests.append(parsed)
            elif section == "events" and name:
                parsed = Event.parse(kv.value)
                if parsed is not None:
                    events.append(parsed)
            elif section == "revoked" and name:
                parsed = _marker(name, kv.value)
                if parsed is not None:
                    revoked[parsed[0]] = parsed[1]
            elif rel == "controller/leader":
                parsed = leader = ControllerLeader.parse(
                    kv.value, kv.lease, kv.create_revision, kv.mod_revision
                )
            elif rel == "config":
                parsed = settings = ClusterPolicy.parse(kv.value, kv.mod_revision)
                config_rev = kv.mod_revision
            elif rel == "epoch":
                parsed = epoch = parse_epoch(kv.value)
                epoch_rev = kv.mod_revision
            else:
                continue
            if parsed is None:
                problems.append(f"{rel}: unreadable value {kv.value[:80]!r}")
        return cls(
            cluster=schema.cluster,
            revision=revision,
            nodes=nodes,
            vips=vips,
            occupied=frozenset(occupied),
            leader=leader,
            settings=settings,
            requests=tuple(sorted(requests, key=lambda r: (r.created, r.id))),
            events=tuple(sorted(events, key=lambda e: e.seq)),
            epoch=epoch,
            epoch_mod_revision=epoch_rev,
            problems=tuple(problems),
            config_mod_revision=config_rev,
            revoked=revoked,
        )


def _marker(name: str, raw: bytes) -> tuple[int, float] | None:
    """`revoked/<lease hex>`: (lease, embargo seconds)."""
    obj = loads(raw)
    wait = number(obj, "wait") if obj is not None else None
    try:
        lease = int(name, 16)
    except ValueError:
        return None
    return (lease, wait) if wait is not None and 0 <= wait <= 60 else None
