"""The keys the active controller writes for itself: `controller/leader` and `config`.

Parsers return None for a value that is not a usable record (see `records`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from haproxy_py.cluster.jsonvalue import choice, dumps, flag, integer, loads, number, text, texts

# bgp: every node that may serve a VIP announces it to its routers (`controller.announce`)
Mode = Literal["active-standby", "active-active", "bgp"]
MODES: tuple[Mode, ...] = ("active-standby", "active-active", "bgp")


@dataclass(frozen=True)
class PeerAddress:
    """Where a controller answers the standbys' liveness probe, and the common name of the
    certificate it answers with (`controller.peer`)."""

    address: str
    port: int
    name: str

    def to_dict(self) -> dict[str, object]:
        return {"address": self.address, "port": self.port, "name": self.name}

    @classmethod
    def parse(cls, obj: object) -> PeerAddress | None:
        if not isinstance(obj, dict):
            return None
        address, name, port = text(obj, "address"), text(obj, "name"), integer(obj, "port")
        if address is None or name is None or not 0 < port < 65536:
            return None
        return cls(address, port, name)


@dataclass(frozen=True)
class ControllerLeader:
    """`controller/leader`: the active controller, under its own lease."""

    id: str
    since: float
    metrics: str | None = None
    peer: PeerAddress | None = None  # None: it cannot be probed (no endpoint, older version)
    lease: int = 0
    create_revision: int = 0
    mod_revision: int = 0
    # the leader gives its lease up itself this many seconds after its last renewed keepalive
    # (0: only when etcd ends it), so a standby may revoke it on a 0 s reading
    # (`controller.expiry`, `haproxy_py.cluster.timing` lapse path)
    lapse: int = 0

    def to_json(self) -> bytes:
        peer = self.peer.to_dict() if self.peer else None
        lapse = {"lapse": self.lapse} if self.lapse else {}
        return dumps(
            {"id": self.id, "since": self.since, "metrics": self.metrics, "peer": peer, **lapse}
        )

    @classmethod
    def parse(
        cls, raw: bytes, lease: int = 0, create_revision: int = 0, mod_revision: int = 0
    ) -> ControllerLeader | None:
        obj = loads(raw)
        if obj is None:
            return None
        ident = text(obj, "id")
        if ident is None:
            return None
        return cls(
            id=ident,
            since=number(obj, "since", 0.0) or 0.0,
            metrics=text(obj, "metrics"),
            peer=PeerAddress.parse(obj.get("peer")),
            lease=lease,
            create_revision=create_revision,
            mod_revision=mod_revision,
            lapse=integer(obj, "lapse"),
        )


@dataclass(frozen=True)
class ClusterPolicy:
    """`config`: the policy the active controller applies.

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

    def same_content(self, other: ClusterPolicy | None) -> bool:
        return other is not None and self.to_json() == other.to_json()

    @classmethod
    def parse(cls, raw: bytes, mod_revision: int = 0) -> ClusterPolicy | None:
        obj = loads(raw)
        if obj is None:
            return None
        mode = choice(obj, "mode", MODES)
        if mode is None:
            return None
        hold = number(obj, "failback_hold", 30.0)
        return cls(
            mode=mode,
            vips=texts(obj, "vips"),
            failback=flag(obj, "failback"),
            failback_hold=hold if hold is not None and hold >= 0 else 30.0,
            paused=flag(obj, "paused"),
            drained=tuple(sorted(set(texts(obj, "drained")))),
            mod_revision=mod_revision,
        )
