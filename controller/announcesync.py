"""BGP mode: write `announce/<node>/vips` from `controller.announce`'s answer (the I/O half).

Each cycle reads `announce/`, asks the pure `controller.announce.plan` which
nodes may announce which VIP (the previous answer stands while paused), and
writes only the nodes whose list changed, each in one transaction that
compares the key's mod revision and the leader fence: a stale view or a lost
leadership writes nothing. A node that is no longer registered has its key
deleted; a registered node with nothing to announce gets an empty list.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Mapping

import structlog

from controller.announce import Announcements, Policy, plan
from haproxy_py.cluster.announcement import Announce
from haproxy_py.cluster.records import ClusterSettings, ClusterView
from haproxy_py.cluster.store import Compare, Delete, Put, mod_revision_is
from haproxy_py.cluster.storeapi import KVStore

log = structlog.get_logger(__name__)


def by_vip(per_node: Mapping[str, Announce]) -> dict[str, frozenset[str]]:
    """(pure) node -> VIPs, turned into VIP -> nodes."""
    out: dict[str, set[str]] = defaultdict(set)
    for node, record in per_node.items():
        for vip in record.vips:
            out[vip].add(node)
    return {vip: frozenset(nodes) for vip, nodes in out.items()}


def by_node(answer: Announcements) -> dict[str, tuple[str, ...]]:
    """(pure) VIP -> nodes, turned into node -> sorted VIPs."""
    out: dict[str, list[str]] = defaultdict(list)
    for vip, nodes in answer.nodes.items():
        for node in nodes:
            out[node].append(vip)
    return {node: tuple(sorted(vips)) for node, vips in out.items()}


class AnnounceSync:
    """The leader's writer of `announce/`."""

    def __init__(self, store: KVStore, fence: Callable[[], list[Compare]], policy: Policy) -> None:
        self.store = store
        self.fence = fence
        self.policy = policy
        self._said: dict[str, tuple[frozenset[str], str]] = {}  # what was last logged

    async def read(self) -> dict[str, Announce]:
        schema = self.store.schema
        kvs, _ = await self.store.get_prefix(schema.announce_prefix)
        out = {}
        for kv in kvs:
            node = schema.announce_node(kv.key)
            if node is None:
                continue  # not ours: left alone
            record = Announce.parse(kv.value, kv.mod_revision)
            # unreadable: replaced on the next write, compared on its own revision
            out[node] = record or Announce((), kv.mod_revision)
        return out

    async def sync(self, view: ClusterView, settings: ClusterSettings) -> int:
        """Bring `announce/` to the plan; the number of keys written."""
        current = await self.read()
        answer = plan(settings.vips, view.nodes, settings, self.policy, by_vip(current))
        changed: dict[tuple[tuple[str, ...], str], list[str]] = defaultdict(list)
        for vip, reason in answer.reasons.items():
            if self._said.get(vip) != (answer.nodes[vip], reason):
                changed[(tuple(sorted(answer.nodes[vip])), reason)].append(vip)
        for (nodes, reason), vips in changed.items():  # one line per outcome, not per VIP
            log.info("announcers", vips=len(vips), first=vips[0], nodes=list(nodes), reason=reason)
        self._said = {v: (answer.nodes[v], r) for v, r in answer.reasons.items()}
        wanted = by_node(answer)
        written = 0
        for node in sorted(set(current) | set(wanted) | set(view.nodes)):
            have = current.get(node)
            mine = wanted.get(node, ())
            key = self.store.schema.announce(node)
            guard = [mod_revision_is(key, have.mod_revision if have else 0), *self.fence()]
            if node not in view.nodes and not mine:
                op: Put | Delete | None = Delete(key) if have is not None else None
            else:
                unchanged = have is not None and have.vips == mine
                op = None if unchanged else Put(key, Announce(mine).to_json())
            if op is not None and await self.store.txn(guard, [op]):
                written += 1
        return written
