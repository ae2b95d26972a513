"""KV cache events: page hashes, what a radix tree's changes publish, the router's index and the
delivery lag; and a randomized check that the index always mirrors the tree."""

from __future__ import annotations

import numpy as np
import pytest

from kvsim.cache.radix import RadixTree
from kvsim.cluster.kv_events import (
    DEVICE,
    HOST,
    EventFeed,
    KvEvent,
    KvEventPublisher,
    PrefixIndex,
    page_hashes,
)

P = 4  # tokens per page


def test_page_hashes_chain_and_drop_the_partial_page() -> None:
    tokens = list(range(10))
    h = page_hashes(tokens, P)
    assert len(h) == 2
    assert h[0] == hash((0, (0, 1, 2, 3)))
    assert h[1] == hash((h[0], (4, 5, 6, 7)))
    assert page_hashes(np.array(tokens), P) == h
    assert page_hashes(tokens[4:8], P, start=h[0]) == [h[1]]


class Recorder:
    def __init__(self) -> None:
        self.events: list[KvEvent] = []
        self.now = 0.0

    def emit(self, event: KvEvent) -> None:
        self.events.append(event)


def watched(tiered: bool) -> tuple[RadixTree, KvEventPublisher, Recorder]:
    tree = RadixTree(tiers=("device", "host")) if tiered else RadixTree()
    rec = Recorder()
    pub = KvEventPublisher(3, P, rec.emit, lambda: rec.now)
    pub.attach(tree, tiered=tiered)
    return tree, pub, rec


def test_untiered_tree_publishes_device_stores_and_removals() -> None:
    tree, _, rec = watched(tiered=False)
    a = list(range(8))
    b = [*range(4), 100, 101, 102, 103]
    rec.now = 1.0
    tree.insert(a, 1.0)
    tree.insert(b, 2.0)  # splits a's node after one page: nothing is published for the split
    ha, hb = page_hashes(a, P), page_hashes(b, P)
    assert [(e.time_s, e.instance, e.stored, e.tier, e.hashes) for e in rec.events] == [
        (1.0, 3, True, DEVICE, tuple(ha)),
        (1.0, 3, True, DEVICE, (hb[1],)),
    ]
    rec.events.clear()
    tree.evict(12)  # both leaves (one page each), then their shared parent once it is a leaf
    assert sorted(e.hashes for e in rec.events) == sorted([(ha[1],), (hb[1],), (ha[0],)])
    assert all(not e.stored and e.tier == DEVICE for e in rec.events)


def test_tiered_tree_publishes_tier_changes() -> None:
    tree, _, rec = watched(tiered=True)
    tokens = list(range(8))
    node = tree.insert(tokens, 0.0, tier="device").last_node
    tree.add_tier(node, "host")
    tree.remove_tier(node, "device")
    h = tuple(page_hashes(tokens, P))
    assert [(e.stored, e.tier, e.hashes) for e in rec.events] == [
        (True, DEVICE, h),
        (True, HOST, h),
        (False, DEVICE, h),
    ]
    index = PrefixIndex(4)
    for event in rec.events:
        index.apply(event)
    assert index.prefix_hit(3, list(h)) == (0, 2)
    assert index.pages(3) == 2


def test_prefix_hit_is_device_run_then_host_run() -> None:
    index = PrefixIndex(1)
    index.apply(KvEvent(0.0, 0, True, DEVICE | HOST, (1, 2)))
    index.apply(KvEvent(0.0, 0, True, HOST, (3, 4)))
    index.apply(KvEvent(0.0, 0, True, DEVICE, (6,)))
    assert index.prefix_hit(0, [1, 2, 3, 4, 5, 6]) == (2, 2)
    assert index.prefix_hit(0, [3, 4]) == (0, 2)
    index.apply(KvEvent(0.0, 0, False, DEVICE, (1,)))
    assert index.prefix_hit(0, [1, 2]) == (0, 2)
    index.apply(KvEvent(0.0, 0, False, HOST, (1,)))
    assert index.prefix_hit(0, [1, 2]) == (0, 0)
    assert index.applied == 5


def test_feed_delivers_after_the_lag_in_order() -> None:
    index = PrefixIndex(1)
    feed = EventFeed(index, lag_s=0.5)
    feed.publish(KvEvent(1.0, 0, True, DEVICE, (7,)))
    feed.publish(KvEvent(1.0, 0, False, DEVICE, (7,)))
    feed.publish(KvEvent(1.2, 0, True, DEVICE, (8,)))
    feed.deliver(1.49)
    assert index.applied == 0 and feed.pending() == 3
    feed.deliver(1.5)
    assert index.applied == 2 and index.prefix_hit(0, [7]) == (0, 0)
    feed.deliver(1.7)
    assert index.prefix_hit(0, [8]) == (1, 0) and feed.pending() == 0
    with pytest.raises(ValueError, match="lag_s: must be >= 0"):
        EventFeed(index, -1.0)


def tree_pages(tree: RadixTree, size: int = P, *, tiered: bool = True) -> dict[int, int]:
    """Block hash -> tier bits of everything the tree holds, computed from scratch (``size`` tokens per
    block; an untiered tree holds everything on device)."""
    names = tree.tier_names
    out: dict[int, int] = {}
    for node in tree.iter_nodes():
        if node is tree.root:
            continue
        path = list(tree.full_key(node))
        start = len(path) - len(node.key)
        bits = DEVICE
        if tiered:
            bits = (DEVICE if node.tiers & (1 << names.index("device")) else 0) | (
                HOST if node.tiers & (1 << names.index("host")) else 0
            )
        # The node owns the blocks whose last token it holds.
        for p, h in enumerate(page_hashes(path, size)):
            if start < (p + 1) * size <= len(path) and bits:
                out[h] = bits
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_index_mirrors_a_tiered_tree_under_random_operations(seed: int) -> None:
    rng = np.random.default_rng(seed)
    tree = RadixTree(tiers=("device", "host"))
    index = PrefixIndex(4)
    feed = EventFeed(index, 0.0)
    rec = Recorder()
    KvEventPublisher(3, P, feed.publish, lambda: rec.now).attach(tree, tiered=True)
    prefixes = [list(rng.integers(0, 3, size=P * 3)) for _ in range(4)]
    for step in range(300):
        rec.now = float(step)
        op = rng.integers(0, 4)
        if op == 0:
            base = prefixes[rng.integers(0, 4)]
            tail = list(rng.integers(0, 3, size=P * int(rng.integers(0, 4))))  # small alphabet: odd splits
            cut = P * int(rng.integers(1, 4))
            tree.insert([*base[:cut], *tail], rec.now, tier="device")
        elif op == 1:
            tree.evict(P * int(rng.integers(1, 4)), tier="device")
        elif op == 2:
            nodes = [n for n in tree.iter_nodes() if n is not tree.root]
            if nodes:
                tree.add_tier(nodes[int(rng.integers(0, len(nodes)))], "host")
        else:
            tree.evict(P * int(rng.integers(1, 4)), tier="host", exclude_tiers=("device",))
        feed.deliver(rec.now)
        assert index._held[3] == tree_pages(tree), f"step {step}"
