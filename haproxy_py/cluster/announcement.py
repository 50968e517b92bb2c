"""`announce/<node>/vips` (BGP mode): the VIPs one node may announce; the active controller
writes it.

One key per node, not per VIP, so that a node's loss or drain is one write
whatever the number of VIPs (the revision budget: at most 6 per node per
minute), and an agent reads exactly one key (RBAC: `announce/<its name>`).
The key is bound to no lease: a restarted agent finds it unchanged and goes
on announcing (BIRD kept the routes meanwhile), and a node whose lease ended
finds it again when it returns (`controller.announce` rule 6), so a death and a
return cost no write of the controller's while the answer stays the same.
"""

from __future__ import annotations

from dataclasses import dataclass

from haproxy_py.cluster.jsonvalue import dumps, loads, texts


@dataclass(frozen=True)
class Announce:
    vips: tuple[str, ...] = ()
    mod_revision: int = 0

    def to_json(self) -> bytes:
        return dumps({"vips": sorted(self.vips)})

    @classmethod
    def parse(cls, raw: bytes, mod_revision: int = 0) -> Announce | None:
        """None for a value that is not an object (an unreadable key: nothing may be
        announced from it)."""
        obj = loads(raw)
        if obj is None:
            return None
        return cls(tuple(sorted(set(texts(obj, "vips")))), mod_revision)
