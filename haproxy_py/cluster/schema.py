"""The etcd key schema: the only place where key strings are spelled.

All keys of one cluster live under `/haproxy-py/<cluster>/`:

    nodes/<node>        NodeRecord        under the node's lease (agent; its release acks too)
    controller/leader   ControllerLeader  under the controller's lease
    vips/<vip>          VipAssignment     no lease; names the owner's lease (controller only)
    requests/<id>       Request (+ result) no lease (hactl writes, controller answers)
    config              ClusterPolicy     no lease (active controller)
    events/<seq>        Event             no lease, bounded history (seq = epoch, zero-padded)
    epoch               integer text      no lease, +1 on every ownership change
    announce/<node>/vips Announce         no lease; BGP mode: the VIPs the node may announce
    revoked/<lease hex> RevokeMarker      under a short lease of its own; written by a controller
                                          before it revokes a lease for failed probes
"""

from __future__ import annotations

from dataclasses import dataclass

ROOT = "/haproxy-py/"
EVENT_SEQ_DIGITS = 12  # zero-padded so that lexical order is numeric order


@dataclass(frozen=True)
class Schema:
    """Key builders for one cluster."""

    cluster: str

    def __post_init__(self) -> None:
        if not self.cluster or "/" in self.cluster:
            raise ValueError(f"cluster name must be non-empty without '/', got {self.cluster!r}")

    @property
    def prefix(self) -> str:
        return f"{ROOT}{self.cluster}/"

    @property
    def nodes_prefix(self) -> str:
        return f"{self.prefix}nodes/"

    @property
    def vips_prefix(self) -> str:
        return f"{self.prefix}vips/"

    @property
    def announce_prefix(self) -> str:
        return f"{self.prefix}announce/"

    @property
    def requests_prefix(self) -> str:
        return f"{self.prefix}requests/"

    @property
    def events_prefix(self) -> str:
        return f"{self.prefix}events/"

    @property
    def revoked_prefix(self) -> str:
        return f"{self.prefix}revoked/"

    def revoked(self, lease: int) -> str:
        """`revoked/<lease hex>`: the lease was (or is about to be) revoked for failed probes."""
        return f"{self.revoked_prefix}{lease:x}"

    @property
    def leader(self) -> str:
        return f"{self.prefix}controller/leader"

    @property
    def config(self) -> str:
        return f"{self.prefix}config"

    @property
    def epoch(self) -> str:
        return f"{self.prefix}epoch"

    def node(self, name: str) -> str:
        return f"{self.nodes_prefix}{name}"

    def vip(self, address: str) -> str:
        return f"{self.vips_prefix}{address}"

    def announce(self, node: str) -> str:
        """`announce/<node>/vips`: the key sits under a prefix of its own, so the agent may
        watch it (a watch is a range) without a grant on other nodes' keys."""
        return f"{self.announce_prefix}{node}/vips"

    def announce_node(self, key: str) -> str | None:
        """The node an `announce/` key belongs to (None for another key)."""
        rest = key.removeprefix(self.announce_prefix)
        node, sep, tail = rest.partition("/")
        return node if key.startswith(self.announce_prefix) and sep and tail == "vips" else None

    def view_range(self) -> tuple[str, str]:
        """[start, end) of every key the cluster view reads: the prefix after `announce/`,
        which sorts first of the sections (BGP mode's per-node VIP lists, 1.5 MB at 100 nodes
        x 1,000 VIPs, that no view needs: read on their own by who does)."""
        return _after(self.announce_prefix), _after(self.prefix)

    def request(self, request_id: str) -> str:
        return f"{self.requests_prefix}{request_id}"

    def event(self, seq: int) -> str:
        return f"{self.events_prefix}{seq:0{EVENT_SEQ_DIGITS}d}"

    def relative(self, key: str) -> str | None:
        """The part after the cluster prefix, or None for a key of another cluster."""
        return key[len(self.prefix) :] if key.startswith(self.prefix) else None


def _after(prefix: str) -> str:
    """The first key after every key under `prefix` (its last character + 1, as etcd's range
    end for a prefix; the schema's prefixes end in "/")."""
    return prefix[:-1] + chr(ord(prefix[-1]) + 1)
