"""BGP mode: write `announce/<node>/vips` from `controller.announce`'s answer (the I/O half).

Each cycle reads `announce/`, asks the pure `controller.announce.plan` which
nodes may announce which VIP (the previous answer stands while paused), and
writes only the nodes whose list changed, each in one transaction that
compares the key's mod revision and the leader fence: a stale view or a lost
leadership writes nothing. What it last read or wrote is cached (`sync`). A
node whose lease ended keeps its key (`controller.announce` rule 6: a death
and a return then cost no write of the controller's) until `FORGET` s have
passed, then it is deleted; a registered node with nothing to announce gets an
empty list.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Mapping

import structlog

from controller.announce import Announcements, Policy, kept, plan
from haproxy_py.cluster.announcement import Announce
from haproxy_py.cluster.records import ClusterPolicy, ClusterView
from haproxy_py.cluster.storeapi import (
    Compare,
    Delete,
    KVStore,
    Put,
    WatchEvent,
    mod_revision_is,
)

log = structlog.get_logger(__name__)
RESYNC = 10.0  # seconds between full reads of announce/
FEW = 4  # more keys to write than this: read the whole prefix once instead of key by key
BATCH = 32  # writes per transaction (etcd's default limit is 128 operations)
FORGET = 600.0  # seconds after its lease ended that a node's key is deleted (rule 6)


def by_vip(per_node: Mapping[str, Announce]) -> dict[str, frozenset[str]]:
    """(pure) node -> VIPs, turned into VIP -> nodes."""
    out: dict[str, set[str]] = defaultdict(set)
    for node, record in per_node.items():
        for vip in record.vips:
            out[vip].add(node)
    return {vip: frozenset(nodes) for vip, nodes in out.items()}


def by_node(answer: Announcements) -> dict[str, tuple[str, ...]]:
    """(pure) VIP -> nodes, turned into node -> sorted VIPs. VIPs decided together share one
    node set (`plan` decides once per group), so the work is per group and per node, not
    per VIP and node (100 nodes x 1,000 VIPs): a node in one group shares its sorted tuple."""
    groups: dict[frozenset[str], list[str]] = defaultdict(list)
    for vip, nodes in answer.nodes.items():
        groups[nodes].append(vip)
    runs: dict[str, list[tuple[str, ...]]] = defaultdict(list)
    for nodes, vips in groups.items():
        ordered = tuple(sorted(vips))
        for node in nodes:
            runs[node].append(ordered)
    return {
        node: parts[0] if len(parts) == 1 else tuple(sorted(v for part in parts for v in part))
        for node, parts in runs.items()
    }


def outcomes(answer: Announcements) -> dict[tuple[str, ...], tuple[frozenset[str], str]]:
    """(pure) The answer by outcome: sorted VIPs -> (their nodes, why), one entry per group of
    VIPs decided together, so a cycle compares and logs outcomes, not VIPs."""
    groups: dict[tuple[frozenset[str], str], list[str]] = defaultdict(list)
    for vip, nodes in answer.nodes.items():
        groups[(nodes, answer.reasons[vip])].append(vip)
    return {tuple(sorted(vips)): outcome for outcome, vips in groups.items()}


class AnnounceSync:
    """The leader's writer of `announce/`."""

    def __init__(self, store: KVStore, fence: Callable[[], list[Compare]], policy: Policy) -> None:
        self.store = store
        self.fence = fence
        self.policy = policy
        self._said: dict[tuple[str, ...], tuple[frozenset[str], str]] = {}  # last logged
        self._cache: dict[str, Announce] | None = None  # node -> what announce/ holds
        self._read_at = 0.0
        self._gone: dict[str, float] = {}  # node whose lease ended -> since (monotonic)
        self._floor = 0  # the revision the cache was read at: older events are in it
        # value -> its VIPs, for the values of the last read: nodes permitted the same VIPs
        # hold the same bytes, so a read of 100 keys of 1,000 VIPs parses one value, not 100
        self._parsed: dict[bytes, tuple[str, ...] | None] = {}

    async def read(self) -> dict[str, Announce]:
        return (await self._read())[0]

    async def _read(self) -> tuple[dict[str, Announce], int]:
        """Every key under `announce/`, and the revision read at."""
        schema = self.store.schema
        kvs, revision = await self.store.get_prefix(schema.announce_prefix)
        out = {}
        parsed: dict[bytes, tuple[str, ...] | None] = {}
        for kv in kvs:
            node = schema.announce_node(kv.key)
            if node is None:
                continue  # not ours: left alone
            out[node] = self._parse(kv.value, kv.mod_revision, parsed)
        self._parsed = parsed
        return out, revision

    def observe(self, event: WatchEvent) -> None:
        """An event of the controller's watch: a change under `announce/` (our own writes
        too) keeps the cache current, with the revision that guards the key's next write, so
        a write needs no read first. Events older than what the cache holds are ignored; a
        resync drops the cache (the next cycle reads everything)."""
        if self._cache is None:
            return
        if event.kind == "resync":
            self._cache = None
            return
        node = self.store.schema.announce_node(event.key)
        if node is None:
            return
        have = self._cache.get(node)
        if event.mod_revision <= max(self._floor, have.mod_revision if have else 0):
            return
        if event.kind == "delete":
            self._cache.pop(node, None)
        else:
            self._cache[node] = self._parse(event.value, event.mod_revision, self._parsed)

    def _parse(
        self, raw: bytes, mod_revision: int, seen: dict[bytes, tuple[str, ...] | None]
    ) -> Announce:
        """`raw` as a record (unreadable: no VIPs, replaced on the next write, compared on its
        own revision), parsed once per distinct value (`_parsed`, `seen`)."""
        if raw in self._parsed:
            seen[raw] = self._parsed[raw]
        elif raw not in seen:
            record = Announce.parse(raw)
            seen[raw] = None if record is None else record.vips
        return Announce(seen[raw] or (), mod_revision)

    async def sync(self, view: ClusterView, settings: ClusterPolicy) -> int:
        """Bring `announce/` to the plan; the number of keys written.

        What was last read or written is kept, and kept current by the watch (`observe`), so
        a cycle in which nothing changes reads nothing (at 100 nodes and 1,000 VIPs
        `announce/` is ~1.5 MB) and a write compares the revision the cache holds (a key
        whose revision it does not know yet is read first); the writes go in
        transactions of `BATCH`, a failed one drops the cache, and the whole prefix is read
        again every `RESYNC` s (level-triggered)."""
        now = time.monotonic()
        if self._cache is None or now - self._read_at >= RESYNC:
            (self._cache, self._floor), self._read_at = await self._read(), now
        current = self._cache
        previous = by_vip(current) if settings.paused else {}  # only a pause reads it
        answer = plan(settings.vips, view.nodes, settings, self.policy, previous)
        said = outcomes(answer)
        for vips, (nodes, reason) in said.items():  # one line per outcome, not per VIP
            if self._said.get(vips) != (nodes, reason):
                log.info(
                    "announcers", vips=len(vips), first=vips[0], nodes=sorted(nodes), reason=reason
                )
        self._said = said
        wanted = by_node(answer)
        self._gone = {n: self._gone.get(n, now) for n in current if n not in view.nodes}
        todo: dict[str, tuple[str, ...] | None] = {}  # node -> its VIPs, None: delete
        for node in sorted(set(current) | set(view.nodes)):
            have = current.get(node)
            if node in view.nodes:
                target: tuple[str, ...] | None = wanted.get(node, ())
            elif now - self._gone[node] >= FORGET:
                target = None
            else:  # its lease ended: rule 6
                assert have is not None
                target = kept(node, have.vips, settings, self.policy)
            if (have.vips if have is not None else None) != target:
                todo[node] = target
        if not todo:
            return 0
        # the cache's revisions guard the writes; a key we wrote whose event has not come yet
        # (revision 0) is read first
        unknown = [n for n in todo if n in current and not current[n].mod_revision]
        stored = {n: current[n] for n in todo if n in current and current[n].mod_revision}
        stored.update(await self._stored(unknown) if unknown else {})
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
            elif (have := current.get(node)) is None or have.vips != target:
                current[node] = Announce(target)  # (unless its event came first)
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
            if kv is not None:
                out[node] = self._parse(kv.value, kv.mod_revision, self._parsed)
        return out
