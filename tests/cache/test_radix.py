"""The radix tree: matches, splits, inserts, locks, tiers and eviction order, with exact assertions."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvsim.cache import (
    FIFOPolicy,
    LFUPolicy,
    RadixNode,
    RadixTree,
    make_eviction_policy,
    register_eviction_policy,
)


def shape(tree: RadixTree) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """Every node as (full key, own run), parents first."""
    return [(tree.full_key(n), n.key) for n in tree.iter_nodes()]


def test_empty_tree() -> None:
    tree = RadixTree()
    res = tree.match_prefix([1, 2, 3])
    assert res.length == 0 and res.last_node is tree.root
    assert (tree.total_size(), tree.evictable_size(), tree.protected_size(), tree.num_nodes()) == (0, 0, 0, 0)
    assert tree.evict(10).num_blocks == 0
    assert tree.insert([], now=1.0).last_node is tree.root


def test_insert_then_match_exact_and_prefix() -> None:
    tree = RadixTree()
    ins = tree.insert([1, 2, 3, 4], now=1.0)
    assert (ins.prefix_length, ins.last_node.key, ins.last_node.depth) == (0, (1, 2, 3, 4), 4)
    full = tree.match_prefix([1, 2, 3, 4, 5])
    assert (full.length, full.last_node) == (4, ins.last_node)
    assert tree.num_nodes() == 1 and tree.total_size() == 4


def test_partial_match_splits_the_node() -> None:
    tree = RadixTree()
    leaf = tree.insert([1, 2, 3, 4], now=1.0).last_node
    res = tree.match_prefix([1, 2, 9])
    assert res.length == 2
    assert res.last_node.key == (1, 2) and res.last_node.depth == 2
    assert leaf.key == (3, 4) and leaf.parent is res.last_node and leaf.depth == 4
    assert shape(tree) == [((1, 2), (1, 2)), ((1, 2, 3, 4), (3, 4))]
    # The split keeps the total and creates one node with a fresh id.
    assert tree.total_size() == 4 and tree.num_nodes() == 2
    assert (leaf.id, res.last_node.id) == (1, 2)
    tree.check_invariants()


def test_match_shorter_than_edge_splits_at_query_end() -> None:
    tree = RadixTree()
    tree.insert([1, 2, 3, 4], now=1.0)
    res = tree.match_prefix([1, 2, 3])
    assert (res.length, res.last_node.key) == (3, (1, 2, 3))
    assert shape(tree) == [((1, 2, 3), (1, 2, 3)), ((1, 2, 3, 4), (4,))]


def test_insert_divergent_suffix_adds_a_sibling() -> None:
    tree = RadixTree()
    tree.insert([1, 2, 3, 4], now=1.0)
    res = tree.insert([1, 2, 5, 6, 7], now=2.0)
    assert res.prefix_length == 2 and res.last_node.key == (5, 6, 7)
    assert shape(tree) == [
        ((1, 2), (1, 2)),
        ((1, 2, 3, 4), (3, 4)),
        ((1, 2, 5, 6, 7), (5, 6, 7)),
    ]
    assert tree.total_size() == 7
    assert tree.match_prefix([1, 2, 5, 6]).length == 4
    tree.check_invariants()


def test_insert_existing_prefix_returns_its_node() -> None:
    tree = RadixTree()
    tree.insert([1, 2, 3, 4], now=1.0)
    res = tree.insert([1, 2], now=2.0)
    assert res.prefix_length == 2 and res.last_node.key == (1, 2)
    assert tree.total_size() == 4 and tree.num_nodes() == 2


def test_numpy_and_tuple_keys_are_equivalent() -> None:
    tree = RadixTree()
    tree.insert(np.array([5, 6, 7], dtype=np.int64), now=1.0)
    assert tree.match_prefix((5, 6, 7)).length == 3
    assert tree.match_prefix(np.array([5, 6, 8])).length == 2


def test_values_are_aligned_and_split_with_the_key() -> None:
    tree = RadixTree()
    leaf = tree.insert([1, 2, 3, 4], now=1.0, value=np.array([10, 20, 30, 40])).last_node
    mid = tree.match_prefix([1, 2]).last_node
    assert mid.value.tolist() == [10, 20] and leaf.value.tolist() == [30, 40]
    other = tree.insert([1, 2, 7], now=2.0, value=[100, 200, 700]).last_node
    assert other.value == [700]  # only the new suffix is stored; the caller frees the rest
    with pytest.raises(ValueError, match="value: length 2"):
        tree.insert([9, 9, 9], now=3.0, value=[1, 2])


def test_access_stats() -> None:
    tree = RadixTree()
    tree.insert([1, 2, 3, 4], now=1.0)
    tree.insert([1, 2, 5], now=2.0)
    top = tree.match_prefix([1, 2]).last_node
    assert (top.created, top.last_access, top.hit_count) == (1.0, 2.0, 0)
    tree.match_prefix([1, 2, 3], now=5.0)
    left = tree.match_prefix([1, 2, 3]).last_node  # no `now`: a peek
    assert (top.last_access, top.hit_count) == (5.0, 1)
    assert (left.last_access, left.hit_count) == (5.0, 1)
    right = tree.match_prefix([1, 2, 5]).last_node
    assert (right.last_access, right.hit_count) == (2.0, 0)
    tree.touch(right, now=9.0)
    assert (right.last_access, right.hit_count, top.last_access, top.hit_count) == (9.0, 1, 9.0, 2)


def test_locks_propagate_to_the_root() -> None:
    tree = RadixTree()
    tree.insert([1, 2, 3, 4], now=1.0)
    leaf = tree.insert([1, 2, 5, 6], now=2.0).last_node
    top = leaf.parent
    assert top is not None
    assert tree.inc_lock(leaf) == 4  # (5, 6) and (1, 2)
    assert (leaf.lock_ref, top.lock_ref) == (1, 1)
    assert (tree.protected_size(), tree.evictable_size()) == (4, 2)
    assert tree.inc_lock(leaf) == 0
    assert (leaf.lock_ref, top.lock_ref) == (2, 2)
    assert tree.dec_lock(leaf) == 0
    assert tree.dec_lock(leaf) == 4
    assert (tree.protected_size(), tree.evictable_size()) == (0, 6)
    with pytest.raises(ValueError, match="is not locked"):
        tree.dec_lock(leaf)
    tree.check_invariants()


def test_locked_path_is_never_evicted() -> None:
    tree = RadixTree()
    tree.insert([1, 2, 3], now=1.0)
    keep = tree.insert([1, 2, 4], now=2.0).last_node
    tree.inc_lock(keep)
    res = tree.evict(100)
    assert [n.key for n in res.nodes] == [(3,)]
    assert res.num_blocks == 1
    assert shape(tree) == [((1, 2), (1, 2)), ((1, 2, 4), (4,))]
    tree.dec_lock(keep)
    assert [n.key for n in tree.evict(100).nodes] == [(4,), (1, 2)]
    assert tree.total_size() == 0 and tree.num_nodes() == 0
    tree.check_invariants()


def test_lock_on_the_root_is_a_no_op() -> None:
    tree = RadixTree()
    assert tree.inc_lock(tree.root) == 0
    assert tree.dec_lock(tree.root) == 0


def build_lru_tree() -> RadixTree:
    tree = RadixTree()
    tree.insert([1, 2, 3], now=1.0)  # leaf (3,) under (1, 2)
    tree.insert([1, 2, 4], now=2.0)
    tree.insert([7, 8], now=3.0)
    tree.insert([9], now=4.0)
    return tree


def test_lru_order_with_parents_becoming_leaves() -> None:
    tree = build_lru_tree()
    tree.match_prefix([1, 2, 3], now=10.0)  # (1,2) and (3,) now most recent
    order = [n.key for n in tree.evict(100).nodes]
    # (4,) last at 2.0 -> (7, 8) at 3.0 -> (9,) at 4.0 -> (3,) at 10.0 (id 1) -> (1, 2) at 10.0 (its parent).
    assert order == [(4,), (7, 8), (9,), (3,), (1, 2)]


def test_evict_stops_after_enough_blocks_and_may_overshoot() -> None:
    tree = build_lru_tree()
    res = tree.evict(2)
    # (3,) at 1.0 then (4,) at 2.0 cover 2 blocks.
    assert [n.key for n in res.nodes] == [(3,), (4,)] and res.num_blocks == 2
    res = tree.evict(1)
    assert [n.key for n in res.nodes] == [(1, 2)] and res.num_blocks == 2  # whole node
    assert all(n.parent is None for n in res.nodes)
    assert tree.total_size() == 3


def test_ties_break_by_node_id() -> None:
    tree = RadixTree()
    for key in ([5], [3], [4]):
        tree.insert(key, now=1.0)
    assert [n.key for n in tree.evict(3).nodes] == [(5,), (3,), (4,)]


def test_lfu_order() -> None:
    tree = RadixTree(policy="lfu")
    tree.insert([1], now=1.0)
    tree.insert([2], now=2.0)
    tree.insert([3], now=3.0)
    for _ in range(3):
        tree.match_prefix([1], now=5.0)
    tree.match_prefix([2], now=6.0)
    # hits: (3,)=0, (2,)=1, (1,)=3
    assert [n.key for n in tree.evict(3).nodes] == [(3,), (2,), (1,)]


def test_fifo_order_ignores_access() -> None:
    tree = RadixTree(policy=FIFOPolicy())
    tree.insert([1], now=1.0)
    tree.insert([2], now=2.0)
    tree.match_prefix([1], now=9.0)
    assert [n.key for n in tree.evict(2).nodes] == [(1,), (2,)]


def test_policy_can_be_overridden_per_call() -> None:
    tree = RadixTree()  # LRU
    tree.insert([1], now=1.0)
    tree.insert([2], now=2.0)
    tree.match_prefix([1], now=3.0)
    tree.match_prefix([1], now=4.0)
    tree.match_prefix([2], now=5.0)
    # LRU would take (1,) first (last access 4.0 < 5.0); LFU takes (2,) (1 hit < 2 hits).
    assert [n.key for n in tree.evict(1, policy=LFUPolicy()).nodes] == [(2,)]
    assert [n.key for n in tree.evict(1).nodes] == [(1,)]
    tree.check_invariants()


def test_per_call_policy_follows_parents() -> None:
    tree = RadixTree()
    tree.insert([1, 2], now=1.0)
    tree.insert([1, 3], now=1.0)
    tree.insert([5], now=0.5)
    assert [n.key for n in tree.evict(10, policy="fifo").nodes] == [(5,), (2,), (3,), (1,)]


def test_policy_registry() -> None:
    assert make_eviction_policy("LRU").name == "lru"
    with pytest.raises(ValueError, match="unknown eviction policy 'mru'"):
        make_eviction_policy("mru")

    class MostRecentFirst:
        name = "mru"

        def priority(self, node: RadixNode) -> tuple[float, int]:
            return (-node.last_access, node.id)

    register_eviction_policy("mru", MostRecentFirst)
    tree = RadixTree(policy="mru")
    tree.insert([1], now=1.0)
    tree.insert([2], now=2.0)
    assert [n.key for n in tree.evict(1).nodes] == [(2,)]


def test_tiers_sizes_and_tier_eviction() -> None:
    tree = RadixTree()
    tree.insert([1, 2], now=1.0, tier="device")
    tree.insert([1, 2, 3], now=2.0, tier="device")
    tree.insert([4], now=3.0, tier="host")
    top = tree.match_prefix([1, 2]).last_node
    mid = tree.match_prefix([1, 2, 3]).last_node
    tree.add_tier(top, "host")
    assert tree.tiers_of(top) == ("device", "host") and tree.tiers_of(mid) == ("device",)
    assert (tree.tier_size("device"), tree.tier_size("host"), tree.tier_size("storage")) == (3, 3, 0)
    # Device eviction takes device leaves: (3,) first (no other tier: removed), then (1, 2) keeps host.
    res = tree.evict(10, tier="device")
    assert [n.key for n in res.nodes] == [(3,), (1, 2)] and res.num_blocks == 3
    assert mid.parent is None and top.parent is tree.root
    assert tree.tiers_of(top) == ("host",)
    assert (tree.tier_size("device"), tree.tier_size("host"), tree.total_size()) == (0, 3, 3)
    # Host eviction now removes both remaining nodes in LRU order.
    assert [n.key for n in tree.evict(10, tier="host").nodes] == [(1, 2), (4,)]
    assert tree.total_size() == 0
    tree.check_invariants()


def test_tier_leaf_needs_children_without_the_tier() -> None:
    tree = RadixTree()
    tree.insert([1], now=1.0, tier="host")
    child = tree.insert([1, 2], now=2.0, tier="host").last_node
    parent = child.parent
    assert parent is not None
    tree.add_tier(parent, "device")
    # The parent is the only device holder and its child has no device copy: it is a device leaf.
    assert [n.key for n in tree.evict(1, tier="device").nodes] == [(1,)]
    assert parent.parent is tree.root and tree.tiers_of(parent) == ("host",)
    tree.remove_tier(child, "host")
    assert tree.tier_size("host") == 1
    tree.check_invariants()


def test_locked_nodes_keep_their_tier() -> None:
    tree = RadixTree()
    node = tree.insert([1, 2], now=1.0, tier="device").last_node
    tree.inc_lock(node)
    assert tree.tier_size("device", evictable_only=True) == 0
    assert tree.evict(5, tier="device").num_blocks == 0
    tree.dec_lock(node)
    assert tree.tier_size("device", evictable_only=True) == 2


def test_unknown_tier_and_detached_nodes() -> None:
    tree = RadixTree(tiers=("gpu",))
    with pytest.raises(ValueError, match="unknown tier 'host'"):
        tree.insert([1], now=1.0, tier="host")
    node = tree.insert([1], now=1.0).last_node
    tree.remove(node)
    with pytest.raises(ValueError, match="not in this tree"):
        tree.inc_lock(node)
    with pytest.raises(ValueError, match="tiers: need"):
        RadixTree(tiers=("a", "a"))


def test_remove_only_unlocked_leaves() -> None:
    tree = RadixTree()
    leaf = tree.insert([1, 2], now=1.0).last_node
    tree.insert([1, 3], now=1.0)
    parent = leaf.parent
    assert parent is not None
    with pytest.raises(ValueError, match="only an unlocked leaf"):
        tree.remove(parent)
    tree.inc_lock(leaf)
    with pytest.raises(ValueError, match="only an unlocked leaf"):
        tree.remove(leaf)


def test_pretty() -> None:
    tree = RadixTree()
    tree.insert([1, 2, 3], now=1.0, tier="device")
    tree.insert([1, 2, 4], now=1.0)
    assert tree.pretty() == (
        "root\n"
        "  [1, 2] id=2 lock=0 tiers=[device]\n"
        "    [3] id=1 lock=0 tiers=[device]\n"
        "    [4] id=3 lock=0 tiers=[]"
    )


def test_many_nodes_stay_consistent() -> None:
    rng = np.random.default_rng(7)  # a local generator: test data only
    tree = RadixTree()
    base = [tuple(rng.integers(0, 50, size=6).tolist()) for _ in range(20)]
    for i in range(2000):
        seq = base[i % 20][: int(rng.integers(1, 6))] + tuple(rng.integers(0, 1000, size=4).tolist())
        tree.insert(seq, now=float(i))
        if i % 7 == 0:
            tree.match_prefix(seq, now=float(i) + 0.5)
        if i % 100 == 99:
            tree.evict(200)
    tree.check_invariants()
    before = tree.total_size()
    res = tree.evict(before)
    assert res.num_blocks == before and tree.total_size() == 0 and tree.num_nodes() == 0


ops = st.lists(
    st.tuples(
        st.sampled_from(["insert", "match", "lock", "unlock", "evict", "evict_tier", "tier"]),
        st.lists(st.integers(0, 3), min_size=0, max_size=6),
        st.integers(0, 5),
    ),
    max_size=60,
)


@settings(max_examples=150, deadline=None)
@given(ops)
def test_random_operations_keep_invariants(program: list[tuple[str, list[int], int]]) -> None:
    tree = RadixTree()
    locked: list[tuple[RadixNode, tuple[int, ...]]] = []
    for step, (op, keys, k) in enumerate(program):
        now = float(step)
        if op == "insert":
            res = tree.insert(keys, now=now, tier="device" if k % 2 else "host")
            assert tree.match_prefix(keys).length == len(keys)
            assert res.prefix_length <= len(keys)
        elif op == "match":
            res = tree.match_prefix(keys, now=now)
            assert tree.full_key(res.last_node) == tuple(keys[: res.length])
        elif op == "lock":
            node = tree.match_prefix(keys).last_node
            tree.inc_lock(node)
            locked.append((node, tree.full_key(node)))
        elif op == "unlock" and locked:
            node, _ = locked.pop(k % len(locked))
            tree.dec_lock(node)
        elif op == "evict":
            tree.evict(k + 1)
        elif op == "evict_tier":
            tree.evict(k + 1, tier="device")
        elif op == "tier":
            node = tree.match_prefix(keys).last_node
            if node is not tree.root:
                tree.add_tier(node, "storage") if k % 2 else tree.remove_tier(node, "host")
        tree.check_invariants()
        for node, full in locked:
            assert node is tree.root or node.parent is not None
            assert tree.match_prefix(full).length == len(full)
    for node, _ in locked:
        tree.dec_lock(node)
    tree.evict(10**9)
    assert tree.total_size() == 0 and tree.protected_size() == 0
    tree.check_invariants()
