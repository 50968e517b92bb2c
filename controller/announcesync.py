"""BGP mode: write `announce/<node>/vips` from `controller.announce`'s answer (the I/O half).

Each cycle reads `announce/`, asks the pure `controller.announce.plan` which
nodes may announce which VIP (the previous answer stands while paused), and
writes only the nodes whose list changed, each in one transaction that
compares the key's mod revision and the leader fence: a stale view or a lost
leadership writes nothing. What it last read or wrote is cached (`sync`). A
node that is no longer registered has its key deleted; a registered node with
nothing to announce gets an empty list.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Mapping

import structlog

from controller.announce import Announcements, Policy, plan
from haproxy_py.cluster.announcement import Announce
from haproxy_py.cluster.records import ClusterPolicy, ClusterView
from haproxy_py.cluster.storeapi import Compare, Delete, KVStore, Put, mod_revision_is

log = structlog.get_logger(__name__)
RESYNC = 10.0  # seconds between full reads of announce/
FEW = 4  # more keys to write than this: read the whole prefix once instead of key by key
BATCH = 32  # writes per transaction (etcd's default limit is 128 operations)


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
        self._cache: dict[str, Announce] | None = None  # node -> what announce/ holds
        self._read_at = 0.0

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

    async def sync(self, view: ClusterView, settings: ClusterPolicy) -> int:
        """Bring `announce/` to the plan; the number of keys written.

        What was last read or written is kept, so a cycle in which nothing changes reads
        nothing (at 100 nodes and 1,000 VIPs `announce/` is ~1.5 MB); a key about to be
        written is read first (its revision guards the write), the writes go in
        transactions of `BATCH`, a failed one drops the cache, and the whole prefix is read
        again every `RESYNC` s (level-triggered)."""
        now = time.monotonic()
        if self._cache is None or now - self._read_at >= RESYNC:
            self._cache, self._read_at = await self.read(), now
        current = self._cache
        answer = plan(settings.vips, view.nodes, settings, self.policy, by_vip(current))
        changed: dict[tuple[tuple[str, ...], str], list[str]] = defaultdict(list)
        for vip, reason in answer.reasons.items():
            if self._said.get(vip) != (answer.nodes[vip], reason):
                changed[(tuple(sorted(answer.nodes[vip])), reason)].append(vip)
        for (nodes, reason), vips in changed.items():  # one line per outcome, not per VIP
            log.info("announcers", vips=len(vips), first=vips[0], nodes=list(nodes), reason=reason)
        self._said = {v: (answer.nodes[v], r) for v, r in answer.reasons.items()}
        wanted = by_node(answer)
        todo: dict[str, tuple[str, ...] | None] = {}  # node -> its VIPs, None: delete
        for node in sorted(set(current) | set(wanted) | set(view.nodes)):
            mine = wanted.get(node, ())
            gone = node not in view.nodes and not mine
            have = current.get(node)
            if not ((have is None) if gone else (have is not None and have.vips == mine)):
                todo[node] = None if gone else mine
        if not todo:
            return 0
        stored = await self._stored(list(todo))
        writes: list[tuple[Compare, Put | Delete]] = []
        for node, target in todo.items():
            key, have = self.store.schema.announce(node), stored.get(node)
            guard = mod_revision_is(key, have.mod_revision if have else 0)
            if target is None and have is not None:
                writes.append((guard, Delete(key)))
            elif target is not None and (have is None or have.vips != target):
                writes.append((guard, Put(key, Announce(target).to_json())))
        written = 0
        for start in range(0, len(writes), BATCH):  # a mass expiry: a few transactions
            batch = writes[start : start + BATCH]
            guards = [*(w[0] for w in batch), *self.fence()]
            if not await self.store.txn(guards, [w[1] for w in batch]):
                self._cache = None  # someone else wrote: read everything again next cycle
                return written
            written += len(batch)
        for node, target in todo.items():
            if target is None:
                current.pop(node, None)
            else:
                current[node] = Announce(target)
        return written

    async def _stored(self, nodes: list[str]) -> dict[str, Announce]:
        """What etcd holds for these nodes now (their revisions guard the writes): a read per
        key for a few, one read of the prefix for many."""
        if len(nodes) > FEW:
            everything = await self.read()
            return {n: everything[n] for n in nodes if n in everything}
        out = {}
        for node in nodes:
            kv = await self.store.get(self.store.schema.announce(node))
            if kv is not None:  # unreadable: rewritten, compared on its own revision
                record = Announce.parse(kv.value, kv.mod_revision)
                out[node] = record or Announce((), kv.mod_revision)
        return out
