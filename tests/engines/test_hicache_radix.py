"""The radix tree's eviction options HiCache relies on: ``exclude_tiers`` and ``on_victim``."""

from __future__ import annotations

from kvsim.cache.radix import RadixNode, RadixTree


def two_tier_tree() -> tuple[RadixTree, RadixNode, RadixNode, RadixNode]:
    """Three leaves: ``old`` on device and host (t=1), ``mid`` on host only (t=2), ``new`` on device (t=3)."""
    tree = RadixTree(tiers=("device", "host"))
    old = tree.insert([1, 2], 1.0, tier="device").last_node
    tree.add_tier(old, "host")
    mid = tree.insert([3, 4, 5], 2.0, tier="host").last_node
    new = tree.insert([6], 3.0, tier="device").last_node
    return tree, old, mid, new


def test_exclude_tiers_passes_over_candidates_and_keeps_them_for_later() -> None:
    tree, old, mid, _ = two_tier_tree()
    # LRU would take `old` first; excluding device holders takes the host-only node instead.
    result = tree.evict(1, tier="host", exclude_tiers=("device",))
    assert [n.key for n in result.nodes] == [(3, 4, 5)]
    assert (result.num_blocks, mid.parent) == (3, None)  # no tier and no children left: removed
    tree.check_invariants()
    # Only excluded candidates remain: nothing is evicted, and the call ends.
    assert tree.evict(10, tier="host", exclude_tiers=("device",)).num_blocks == 0
    tree.check_invariants()
    # The passed-over node is still a candidate for an eviction that does not exclude it.
    assert [n.key for n in tree.evict(10, tier="host").nodes] == [(1, 2)]
    assert tree.tiers_of(old) == ("device",)
    tree.check_invariants()


def test_on_victim_sees_each_victim_before_its_tier_is_cleared() -> None:
    tree, old, mid, new = two_tier_tree()
    seen: list[tuple[tuple[int, ...], tuple[str, ...]]] = []

    def write_back(node: RadixNode) -> None:
        seen.append((node.key, tree.tiers_of(node)))
        if not tree.has_tier(node, "host"):
            # Make host room first (a nested eviction of another tier), then copy the victim there.
            tree.evict(1, tier="host", exclude_tiers=("device",))
            tree.add_tier(node, "host")

    result = tree.evict(3, tier="device", on_victim=write_back)
    assert seen == [((1, 2), ("device", "host")), ((6,), ("device",))]
    assert result.num_blocks == 3
    # `old` kept its host copy when it left the device, then was the LRU host-only node when `new` needed
    # host room: the nested eviction removed it. `new` now lives on host only, next to `mid`.
    assert (old.parent, tree.tiers_of(mid), tree.tiers_of(new)) == (None, ("host",), ("host",))
    assert (tree.tier_size("device"), tree.tier_size("host")) == (0, 4)
    tree.check_invariants()


def test_without_the_options_eviction_is_unchanged() -> None:
    tree, _, _, _ = two_tier_tree()
    assert [n.key for n in tree.evict(10, tier="device").nodes] == [(1, 2), (6,)]
    assert (tree.tier_size("device"), tree.tier_size("host"), tree.num_nodes()) == (0, 5, 2)
    tree.check_invariants()
