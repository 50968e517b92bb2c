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
import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal, TypeVar, cast

from haproxy_py.cluster.schema import Schema

Mode = Literal["active-standby", "active-active"]
MODES: tuple[Mode, ...] = ("active-standby", "active-active")
VipState = Literal["assigned", "releasing"]
VIP_STATES: tuple[VipState, ...] = ("assigned", "releasing")
RequestKind = Literal["move", "pause", "resume", "drain", "undrain"]
REQUEST_KINDS: tuple[RequestKind, ...] = ("move", "pause", "resume", "drain", "undrain")
ResultStatus = Literal["running", "done", "refused", "failed"]
RESULT_STATUSES: tuple[ResultStatus, ...] = ("running", "done", "refused", "failed")
FINAL_STATUSES: frozenset[str] = frozenset({"done", "refused", "failed"})

# Why a VIP changed hands; written into events/ and vips/.
CAUSES = (
    "initial",  # never owned (cluster start, VIP added to the config)
    "node lost",  # previous owner's lease is gone
    "proxy unhealthy",  # previous owner dropped it because its proxy failed
    "released",  # previous owner let go while staying registered and healthy
    "manual",  # a move request
    "drain",  # previous owner was drained
    "failback",  # back to a preferred node after failback_hold
    "rebalance",  # active-active spreading onto a recovered node
    "readiness",  # to a node with strictly more backend pools up, after the hold-down
    "not held",  # the owner did not list it as held for a while (interface gone, netlink failing)
)


@dataclass(frozen=True)
class KeyValue:
    """One etcd key as read, with the metadata compare-and-set needs."""

    key: str
    value: bytes
    create_revision: int
    mod_revision: int
    lease: int = 0


def dumps(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":"), sort_keys=True).encode()


def _loads(raw: bytes | str) -> dict[str, Any] | None:
    try:
        obj = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None
    return obj if isinstance(obj, dict) else None


def _str(obj: Mapping[str, Any], key: str, default: str | None = None) -> str | None:
    value = obj.get(key)
    return value if isinstance(value, str) and value else default


def _int(obj: Mapping[str, Any], key: str, default: int = 0) -> int:
    value = obj.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else default


def _float(obj: Mapping[str, Any], key: str, default: float | None = None) -> float | None:
    value = obj.get(key)
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return default


def _bool(obj: Mapping[str, Any], key: str, default: bool = False) -> bool:
    value = obj.get(key)
    return value if isinstance(value, bool) else default


def _strs(obj: Mapping[str, Any], key: str) -> tuple[str, ...]:
    value = obj.get(key)
    if not isinstance(value, list):
        return ()
    return tuple(item for item in value if isinstance(item, str) and item)


L = TypeVar("L", bound=str)


def _choice(obj: Mapping[str, Any], key: str, choices: tuple[L, ...]) -> L | None:
    value = obj.get(key)
    return cast(L, value) if value in choices else None


@dataclass(frozen=True)
class NodeRecord:
    """`nodes/<node>`: a registered proxy node, written by its agent under its own lease.

    `healthy` is liveness (the proxy answers and accepts); `ready` of `pools`
    is readiness (backend pools with a server up), the score the controller
    compares before it moves a VIP for readiness. `unheld` lists VIPs assigned
    here that the agent could not hold for longer than an address lifetime.
    `stopping`: the agent is handing its VIPs over before it exits; the node
    takes none meanwhile.
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
    # The last etcd outage through which the failsafe kept this node's VIPs: (since, until,
    # rounds), unix times; written when etcd answers again (`agent.failsafeloop`).
    failsafe: tuple[float, float, int] | None = None

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
                **({} if self.failsafe is None else {"failsafe": _spell(self.failsafe)}),
            }
        )

    @classmethod
    def parse(
        cls, name: str, raw: bytes, lease: int = 0, mod_revision: int = 0
    ) -> NodeRecord | None:
        obj = _loads(raw)
        if obj is None:
            return None
        return cls(
            name=name,
            address=_str(obj, "address"),
            interface=_str(obj, "interface"),
            priority=_int(obj, "priority", 100),
            version=_str(obj, "version"),
            healthy=_bool(obj, "healthy"),
            healthy_since=_float(obj, "healthy_since"),
            backends_up=_int(obj, "backends_up"),
            backends_total=_int(obj, "backends_total"),
            vips=_strs(obj, "vips"),
            updated=_float(obj, "updated"),
            lease=lease,
            mod_revision=mod_revision,
            ready=_int(obj, "ready"),
            pools=_int(obj, "pools"),
            unheld=_strs(obj, "unheld"),
            stopping=_bool(obj, "stopping"),
            failsafe=_parse_spell(obj.get("failsafe")),
        )


def _spell(spell: tuple[float, float, int]) -> dict[str, float | int]:
    return {"since": spell[0], "until": spell[1], "rounds": spell[2]}


def _parse_spell(obj: object) -> tuple[float, float, int] | None:
    if not isinstance(obj, dict):
        return None
    since, until = _float(obj, "since"), _float(obj, "until")
    if since is None or until is None:
        return None
    return since, until, _int(obj, "rounds")


@dataclass(frozen=True)
class VipAssignment:
    """`vips/<vip>`: who owns a VIP; bound to the owner's lease.

    `state` is `assigned` (the owner holds the address) or `releasing` (the
    controller asked the owner to let go; the owner removes the address and then
    deletes this key, compare on `mod_revision`, as its acknowledgement).
    `move_to` and `request` say where a planned move goes and which request asked;
    `releasing_since` is when the release was asked (the controller gives up and
    restores `assigned` after its release timeout).
    """

    vip: str
    node: str
    epoch: int
    since: float
    state: VipState = "assigned"
    cause: str = "initial"
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
            }
        )

    @classmethod
    def parse(
        cls, vip: str, raw: bytes, lease: int = 0, mod_revision: int = 0
    ) -> VipAssignment | None:
        obj = _loads(raw)
        if obj is None:
            return None
        node = _str(obj, "node")
        state = _choice(obj, "state", VIP_STATES)
        if node is None or state is None:
            return None
        return cls(
            vip=vip,
            node=node,
            epoch=_int(obj, "epoch"),
            since=_float(obj, "since", 0.0) or 0.0,
            state=state,
            cause=_str(obj, "cause", "initial") or "initial",
            move_to=_str(obj, "move_to"),
            request=_str(obj, "request"),
            releasing_since=_float(obj, "releasing_since"),
            lease=lease,
            mod_revision=mod_revision,
        )


@dataclass(frozen=True)
class ControllerLeader:
    """`controller/leader`: the active controller, under its own lease."""

    id: str
    since: float
    metrics: str | None = None
    lease: int = 0
    create_revision: int = 0

    def to_json(self) -> bytes:
        return dumps({"id": self.id, "since": self.since, "metrics": self.metrics})

    @classmethod
    def parse(cls, raw: bytes, lease: int = 0, create_revision: int = 0) -> ControllerLeader | None:
        obj = _loads(raw)
        if obj is None:
            return None
        ident = _str(obj, "id")
        if ident is None:
            return None
        return cls(
            id=ident,
            since=_float(obj, "since", 0.0) or 0.0,
            metrics=_str(obj, "metrics"),
            lease=lease,
            create_revision=create_revision,
        )


@dataclass(frozen=True)
class ClusterSettings:
    """`config`: what the active controller applies.

    `mode`, `vips`, `failback` and `failback_hold` come from the controller's
    `[cluster]` config; `paused` and `drained` are changed by requests and
    survive controller restarts because they live here.
    """

    mode: Mode = "active-standby"
    vips: tuple[str, ...] = ()
    failback: bool = False
    failback_hold: float = 30.0
    paused: bool = False
    drained: tuple[str, ...] = ()
    mod_revision: int = 0

    def to_json(self) -> bytes:
        return dumps(
            {
                "mode": self.mode,
                "vips": list(self.vips),
                "failback": self.failback,
                "failback_hold": self.failback_hold,
                "paused": self.paused,
                "drained": sorted(self.drained),
            }
        )

    def same_content(self, other: ClusterSettings | None) -> bool:
        return other is not None and self.to_json() == other.to_json()

    @classmethod
    def parse(cls, raw: bytes, mod_revision: int = 0) -> ClusterSettings | None:
        obj = _loads(raw)
        if obj is None:
            return None
        mode = _choice(obj, "mode", MODES)
        if mode is None:
            return None
        hold = _float(obj, "failback_hold", 30.0)
        return cls(
            mode=mode,
            vips=_strs(obj, "vips"),
            failback=_bool(obj, "failback"),
            failback_hold=hold if hold is not None and hold >= 0 else 30.0,
            paused=_bool(obj, "paused"),
            drained=tuple(sorted(set(_strs(obj, "drained")))),
            mod_revision=mod_revision,
        )


@dataclass(frozen=True)
class Move:
    """One VIP changing hands, as reported in a request result."""

    vip: str
    source: str | None
    target: str

    def to_obj(self) -> dict[str, Any]:
        return {"vip": self.vip, "from": self.source, "to": self.target}

    @classmethod
    def from_obj(cls, obj: Any) -> Move | None:
        if not isinstance(obj, dict):
            return None
        vip, target = _str(obj, "vip"), _str(obj, "to")
        if vip is None or target is None:
            return None
        return cls(vip=vip, source=_str(obj, "from"), target=target)


@dataclass(frozen=True)
class RequestResult:
    """The controller's answer, written back into the request's own key.

    `running` while a planned move is under way (a new leader resumes it), then
    one of `done`, `refused` (never started: the reason says why) or `failed`.
    `gap_ms` is the longest time a moved VIP may have been unheld, from the
    release request to the new assignment (see `Event`);
    `duration_ms` runs from the controller picking the request up to the result.
    """

    status: ResultStatus
    message: str
    started: float | None = None
    finished: float | None = None
    gap_ms: float | None = None
    duration_ms: float | None = None
    moves: tuple[Move, ...] = ()
    controller: str | None = None

    @property
    def final(self) -> bool:
        return self.status in FINAL_STATUSES

    def to_obj(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "message": self.message,
            "started": self.started,
            "finished": self.finished,
            "gap_ms": self.gap_ms,
            "duration_ms": self.duration_ms,
            "moves": [move.to_obj() for move in self.moves],
            "controller": self.controller,
        }

    @classmethod
    def from_obj(cls, obj: Any) -> RequestResult | None:
        if not isinstance(obj, dict):
            return None
        status = _choice(obj, "status", RESULT_STATUSES)
        if status is None:
            return None
        raw_moves = obj.get("moves")
        moves = [Move.from_obj(item) for item in raw_moves] if isinstance(raw_moves, list) else []
        return cls(
            status=status,
            message=_str(obj, "message", "") or "",
            started=_float(obj, "started"),
            finished=_float(obj, "finished"),
            gap_ms=_float(obj, "gap_ms"),
            duration_ms=_float(obj, "duration_ms"),
            moves=tuple(move for move in moves if move is not None),
            controller=_str(obj, "controller"),
        )


@dataclass(frozen=True)
class Request:
    """`requests/<id>`: an operator's request and, once answered, its result.

    kinds: `move` (one `vip`, or every VIP when vip is None, to `target`, or to
    the best other node when target is None), `pause`/`resume` (automatic
    failover), `drain`/`undrain` (`node`: take its VIPs away and keep them away).
    """

    id: str
    kind: RequestKind
    vip: str | None = None
    target: str | None = None
    node: str | None = None
    created: float = 0.0
    by: str | None = None
    result: RequestResult | None = None
    mod_revision: int = 0

    @property
    def pending(self) -> bool:
        return self.result is None or not self.result.final

    def with_result(self, result: RequestResult) -> Request:
        return replace(self, result=result)

    def to_json(self) -> bytes:
        return dumps(
            {
                "id": self.id,
                "kind": self.kind,
                "vip": self.vip,
                "target": self.target,
                "node": self.node,
                "created": self.created,
                "by": self.by,
                "result": self.result.to_obj() if self.result else None,
            }
        )

    @classmethod
    def parse(cls, request_id: str, raw: bytes, mod_revision: int = 0) -> Request | None:
        obj = _loads(raw)
        if obj is None:
            return None
        kind = _choice(obj, "kind", REQUEST_KINDS)
        if kind is None:
            return None
        return cls(
            id=request_id,
            kind=kind,
            vip=_str(obj, "vip"),
            target=_str(obj, "target"),
            node=_str(obj, "node"),
            created=_float(obj, "created", 0.0) or 0.0,
            by=_str(obj, "by"),
            result=RequestResult.from_obj(obj.get("result")),
            mod_revision=mod_revision,
        )


@dataclass(frozen=True)
class Event:
    """`events/<seq>`: one ownership change (seq is the epoch it produced).

    `gap_ms` runs from when the VIP may have stopped being held (its release was
    asked, or its key was first seen gone by the controller) to this assignment;
    None when unknown (never owned, or first seen by a newly elected leader).
    """

    seq: int
    time: float
    vip: str
    source: str | None
    target: str | None
    cause: str
    gap_ms: float | None = None
    request: str | None = None

    def to_json(self) -> bytes:
        return dumps(
            {
                "seq": self.seq,
                "time": self.time,
                "vip": self.vip,
                "from": self.source,
                "to": self.target,
                "cause": self.cause,
                "gap_ms": self.gap_ms,
                "request": self.request,
            }
        )

    @classmethod
    def parse(cls, raw: bytes) -> Event | None:
        obj = _loads(raw)
        if obj is None:
            return None
        vip, cause = _str(obj, "vip"), _str(obj, "cause")
        seq = _int(obj, "seq", -1)
        if vip is None or cause is None or seq < 0:
            return None
        return cls(
            seq=seq,
            time=_float(obj, "time", 0.0) or 0.0,
            vip=vip,
            source=_str(obj, "from"),
            target=_str(obj, "to"),
            cause=cause,
            gap_ms=_float(obj, "gap_ms"),
            request=_str(obj, "request"),
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
    in `occupied` so that nobody assigns over it).
    """

    cluster: str
    revision: int
    nodes: Mapping[str, NodeRecord] = field(default_factory=dict)
    vips: Mapping[str, VipAssignment] = field(default_factory=dict)
    occupied: frozenset[str] = frozenset()
    leader: ControllerLeader | None = None
    settings: ClusterSettings | None = None
    requests: tuple[Request, ...] = ()
    events: tuple[Event, ...] = ()
    epoch: int = 0
    epoch_mod_revision: int = 0
    problems: tuple[str, ...] = ()
    config_mod_revision: int = 0  # of the `config` key, readable or not (0: absent)

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
        settings: ClusterSettings | None = None
        epoch = epoch_rev = config_rev = 0
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
            elif rel == "controller/leader":
                parsed = leader = ControllerLeader.parse(kv.value, kv.lease, kv.create_revision)
            elif rel == "config":
                parsed = settings = ClusterSettings.parse(kv.value, kv.mod_revision)
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
        )
