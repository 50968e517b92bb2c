"""`controller.announcesync` on the in-memory store: what it writes, and in how many steps."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from controller.announce import Announcements, Policy
from controller.announcesync import BATCH, FORGET, AnnounceSync, by_node, outcomes
from haproxy_py.cluster.announcement import Announce
from haproxy_py.cluster.memstore import MemoryStore
from haproxy_py.cluster.records import ClusterPolicy, ClusterView, KeyValue, NodeRecord
from haproxy_py.cluster.storeapi import Compare, Op, WatchEvent

VIPS = ("198.18.9.1", "198.18.9.2")
SETTINGS = ClusterPolicy(mode="bgp", vips=VIPS)


class Counting(MemoryStore):
    def __init__(self) -> None:
        super().__init__("s")
        self.txns = 0
        self.gets = 0

    async def get(self, key: str) -> KeyValue | None:
        self.gets += 1
        return await super().get(key)

    async def txn(
        self, compares: Sequence[Compare], success: Sequence[Op], failure: Sequence[Op] = ()
    ) -> bool:
        self.txns += 1
        return await super().txn(compares, success, failure)


def view(names: Sequence[str]) -> ClusterView:
    nodes = {n: NodeRecord(name=n, healthy=True, ready=1, pools=1) for n in names}
    return ClusterView(cluster="s", revision=1, nodes=nodes, settings=SETTINGS)


async def stored(store: MemoryStore) -> dict[str, tuple[str, ...]]:
    kvs, _ = await store.get_prefix(store.schema.announce_prefix)
    out = {}
    for kv in kvs:
        node, record = store.schema.announce_node(kv.key), Announce.parse(kv.value)
        assert node is not None and record is not None
        out[node] = record.vips
    return out


async def test_a_mass_change_is_written_in_transactions_of_a_batch() -> None:
    store = Counting()
    sync = AnnounceSync(store, lambda: [], Policy())
    names = [f"n{i:03d}" for i in range(2 * BATCH + 1)]
    assert await sync.sync(view(names), SETTINGS) == len(names)
    assert store.txns == 3  # 65 nodes: 32 + 32 + 1
    assert await stored(store) == {n: VIPS for n in names}
    store.txns = 0
    assert await sync.sync(view(names), SETTINGS) == 0  # nothing changed: nothing written
    assert store.txns == 0
    sync._gone = dict.fromkeys(names, -FORGET)  # all but one lost long ago: keys deleted
    assert await sync.sync(view(names[:1]), SETTINGS) == len(names) - 1
    assert store.txns == 2
    assert await stored(store) == {names[0]: VIPS}


async def test_a_death_and_a_return_with_the_same_answer_write_nothing() -> None:
    store = Counting()
    sync = AnnounceSync(store, lambda: [], Policy())
    await sync.sync(view(["a", "b"]), SETTINGS)
    store.txns = 0
    assert await sync.sync(view(["a"]), SETTINGS) == 0  # b's lease ended: its key stays
    assert await sync.sync(view(["a", "b"]), SETTINGS) == 0  # b is back: the same answer
    assert store.txns == 0
    assert await stored(store) == {"a": VIPS, "b": VIPS}


async def test_a_lost_nodes_key_is_narrowed_by_policy_and_deleted_after_forget() -> None:
    store = Counting()
    sync = AnnounceSync(store, lambda: [], Policy())
    await sync.sync(view(["a", "b", "c"]), SETTINGS)
    fewer = replace(SETTINGS, vips=VIPS[:1])  # a VIP removed from the config
    assert await sync.sync(view(["a"]), fewer) == 3  # a's answer, and b's and c's kept part
    assert await stored(store) == {"a": VIPS[:1], "b": VIPS[:1], "c": VIPS[:1]}
    drained = replace(fewer, drained=("b",))
    assert await sync.sync(view(["a"]), drained) == 1
    assert await stored(store) == {"a": VIPS[:1], "b": (), "c": VIPS[:1]}
    sync._gone["c"] -= FORGET
    assert await sync.sync(view(["a"]), drained) == 1
    assert await stored(store) == {"a": VIPS[:1], "b": ()}


async def test_a_key_changed_by_someone_else_is_read_again_and_put_right() -> None:
    store = Counting()
    sync = AnnounceSync(store, lambda: [], Policy())
    await sync.sync(view(["a", "b"]), SETTINGS)
    await store.put(store.schema.announce("a"), Announce(()).to_json())  # behind its back
    await sync.sync(view(["a", "b"]), SETTINGS)  # the cache says a is fine: a lost write
    assert await stored(store) == {"a": (), "b": VIPS}
    sync._read_at = -1e9  # the periodic full read
    await sync.sync(view(["a", "b"]), SETTINGS)
    assert await stored(store) == {"a": VIPS, "b": VIPS}


def test_by_node_merges_the_groups_a_node_is_in_and_shares_one_groups_tuple() -> None:
    ab, b = frozenset({"a", "b"}), frozenset({"b"})
    nodes = {"198.18.9.3": ab, "198.18.9.1": ab, "198.18.9.2": b}
    reasons = dict.fromkeys(nodes, "why")
    wanted = by_node(Announcements(nodes, reasons))
    assert wanted == {
        "a": ("198.18.9.1", "198.18.9.3"),
        "b": ("198.18.9.1", "198.18.9.2", "198.18.9.3"),
    }
    assert outcomes(Announcements(nodes, reasons)) == {
        ("198.18.9.1", "198.18.9.3"): (ab, "why"),
        ("198.18.9.2",): (b, "why"),
    }


async def test_a_full_read_parses_each_distinct_value_once() -> None:
    store = MemoryStore("s")
    sync = AnnounceSync(store, lambda: [], Policy())
    await sync.sync(view(["a", "b", "c"]), SETTINGS)
    await store.put(store.schema.announce("c"), b"not json")  # unreadable: no VIPs
    found = await sync.read()
    assert {n: r.vips for n, r in found.items()} == {"a": VIPS, "b": VIPS, "c": ()}
    assert found["a"].vips is found["b"].vips  # one parse for the two equal values


async def test_the_watch_keeps_the_cache_so_a_write_reads_nothing_first() -> None:
    store = Counting()
    sync = AnnounceSync(store, lambda: [], Policy())
    await sync.sync(view(["a", "b"]), SETTINGS)
    for name in ("a", "b"):  # the events of our own writes
        kv = await store.get(store.schema.announce(name))
        assert kv is not None
        sync.observe(WatchEvent("put", kv.key, kv.value, kv.mod_revision))
    sync.observe(WatchEvent("put", store.schema.announce("a"), b"{}", 1))  # older: ignored
    store.gets = 0
    less = view(["a", "b"])
    less.nodes["b"] = NodeRecord(name="b", healthy=True, ready=0, pools=1)
    assert await sync.sync(less, SETTINGS) == 1  # b: a pool down
    assert store.gets == 0
    assert await stored(store) == {"a": VIPS, "b": ()}
    sync.observe(WatchEvent("resync", store.schema.prefix, b"", 0))
    assert await sync.sync(view(["a", "b"]), SETTINGS) == 1  # read everything again
    assert await stored(store) == {"a": VIPS, "b": VIPS}
