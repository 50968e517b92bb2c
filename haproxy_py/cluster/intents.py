"""Operator requests, their results, and the ownership history (`requests/`, `events/`).

Parsers return None for a value that is not a usable record (see `records`).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, replace
from typing import Any, Literal, get_args

from haproxy_py.cluster.jsonvalue import choice, dumps, integer, loads, number, text

# Why a VIP changed hands; written into events/ and vips/.
Cause = Literal[
    "initial",  # never owned (cluster start, VIP added to the config)
    "node lost",  # previous owner's lease is gone
    "proxy unhealthy",  # previous owner dropped it because its proxy failed
    "released",  # previous owner let go while staying registered and healthy
    "returned",  # back to the node that had it last (under a new lease): its clients are its own
    "manual",  # a move request
    "drain",  # previous owner was drained
    "failback",  # back to a preferred node after failback_hold
    "rebalance",  # active-active spreading onto a recovered node
    "readiness",  # to a node with strictly more backend pools up, after the hold-down
    "not held",  # the owner did not list it as held for a while (interface gone, netlink failing)
    "removed from the config",  # the VIP is no longer in the [cluster] vips
]
CAUSES: tuple[Cause, ...] = get_args(Cause)

RequestKind = Literal["move", "pause", "resume", "drain", "undrain"]
REQUEST_KINDS: tuple[RequestKind, ...] = ("move", "pause", "resume", "drain", "undrain")
ResultStatus = Literal["running", "done", "refused", "failed"]
RESULT_STATUSES: tuple[ResultStatus, ...] = ("running", "done", "refused", "failed")
FINAL_STATUSES: frozenset[str] = frozenset({"done", "refused", "failed"})


def new_request_id(now: float) -> str:
    """Sortable by time, unique without coordination: `<ms since epoch>-<random hex>`."""
    return f"{int(now * 1000):013d}-{secrets.token_hex(4)}"


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
        vip, target = text(obj, "vip"), text(obj, "to")
        if vip is None or target is None:
            return None
        return cls(vip=vip, source=text(obj, "from"), target=target)


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
        status = choice(obj, "status", RESULT_STATUSES)
        if status is None:
            return None
        raw_moves = obj.get("moves")
        moves = [Move.from_obj(item) for item in raw_moves] if isinstance(raw_moves, list) else []
        return cls(
            status=status,
            message=text(obj, "message", "") or "",
            started=number(obj, "started"),
            finished=number(obj, "finished"),
            gap_ms=number(obj, "gap_ms"),
            duration_ms=number(obj, "duration_ms"),
            moves=tuple(move for move in moves if move is not None),
            controller=text(obj, "controller"),
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
        obj = loads(raw)
        if obj is None:
            return None
        kind = choice(obj, "kind", REQUEST_KINDS)
        if kind is None:
            return None
        return cls(
            id=request_id,
            kind=kind,
            vip=text(obj, "vip"),
            target=text(obj, "target"),
            node=text(obj, "node"),
            created=number(obj, "created", 0.0) or 0.0,
            by=text(obj, "by"),
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
    cause: Cause
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
        obj = loads(raw)
        if obj is None:
            return None
        vip, cause = text(obj, "vip"), choice(obj, "cause", CAUSES)
        seq = integer(obj, "seq", -1)
        if vip is None or cause is None or seq < 0:
            return None
        return cls(
            seq=seq,
            time=number(obj, "time", 0.0) or 0.0,
            vip=vip,
            source=text(obj, "from"),
            target=text(obj, "to"),
            cause=cause,
            gap_ms=number(obj, "gap_ms"),
            request=text(obj, "request"),
        )
