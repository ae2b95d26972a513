"""Router decisions on hand-built instance states, and the read-only radix probe of the cache-aware router."""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np
import pytest

from kvsim.cache.radix import RadixTree
from kvsim.cluster.fleet import parse_cluster_section, tree_prefix_hit
from kvsim.cluster.routers import (
    CacheAwareRouter,
    LeastLoadRouter,
    RoundRobinRouter,
    SessionAffinityRouter,
    make_router,
)
from kvsim.core.errors import ConfigError
from kvsim.workloads.base import Request


@dataclass
class FakeView:
    """An instance state built by hand: its load and the hit it reports for any request."""

    load: int
    device: int = 0
    host: int = 0
    l3: int = 0

    def load_tokens(self) -> int:
        return self.load

    def prefix_hit(self, req: Request) -> tuple[int, int]:
        return self.device, self.host

    def l3_hit(self, req: Request) -> int:
        return self.l3


def _req(rid: int = 0, tokens: list[int] | None = None, session: int | None = None) -> Request:
    ids = np.asarray(tokens if tokens is not None else list(range(10)), dtype=np.int64)
    return Request(rid, 0.0, len(ids), 8, ids, session)


def test_round_robin_cycles_from_zero() -> None:
    router = RoundRobinRouter()
    views = [FakeView(0) for _ in range(3)]
    assert [router.choose(_req(i), views) for i in range(7)] == [0, 1, 2, 0, 1, 2, 0]


def test_least_load_picks_fewest_tokens_ties_to_lowest_index() -> None:
    router = LeastLoadRouter()
    assert router.choose(_req(), [FakeView(500), FakeView(200), FakeView(300)]) == 1
    assert router.choose(_req(), [FakeView(300), FakeView(200), FakeView(200)]) == 1


def test_session_affinity_by_session_id() -> None:
    router = SessionAffinityRouter()
    views = [FakeView(0) for _ in range(4)]
    assert [router.choose(_req(i, session=s), views) for i, s in enumerate((0, 5, 6, 7, 5))] == [
        0,
        1,
        2,
        3,
        1,
    ]


def test_session_affinity_without_session_hashes_first_block() -> None:
    router = SessionAffinityRouter(block_tokens=4)
    views = [FakeView(0) for _ in range(8)]
    # Same first 4 tokens, different tails: same instance; the choice is CRC32 of the block's int64 bytes.
    a = router.choose(_req(0, [1, 2, 3, 4, 9, 9]), views)
    b = router.choose(_req(1, [1, 2, 3, 4, 7]), views)
    expected = zlib.crc32(np.asarray([1, 2, 3, 4], dtype=np.int64).tobytes()) % 8
    assert a == b == expected


def test_cache_aware_score_and_choice() -> None:
    router = CacheAwareRouter(hit_weight=1.0, host_weight=0.5, load_weight=0.1)
    views = [FakeView(load=0), FakeView(load=10_000, device=2048), FakeView(load=1000, device=0, host=2048)]
    # scores: 0; 2048 - 1000 = 1048; 0.5 * 2048 - 100 = 924
    assert [router.score(_req(), v) for v in views] == [0.0, 1048.0, 924.0]
    assert router.choose(_req(), views) == 1
    # A heavier penalty sends the request to the idle instance.
    assert CacheAwareRouter(host_weight=0.5, load_weight=2.0).choose(_req(), views) == 0


def test_cache_aware_counts_only_the_l3_prefix_beyond_memory() -> None:
    router = CacheAwareRouter(hit_weight=1.0, host_weight=0.5, load_weight=0.0, l3_weight=0.25)
    views = [
        FakeView(load=0, device=1024, l3=4096),  # 1024 + 0.25 * 3072 = 1792
        FakeView(load=0, device=512, host=1024, l3=1024),  # 512 + 512 + 0 (KVCM adds nothing here)
        FakeView(load=0, l3=4096),  # 0.25 * 4096 = 1024
    ]
    assert [router.score(_req(), v) for v in views] == [1792.0, 1024.0, 1024.0]
    assert router.choose(_req(), views) == 0
    assert CacheAwareRouter(l3_weight=0.0).score(_req(), FakeView(load=0, l3=4096)) == 0.0


def test_cache_aware_ties_go_to_lowest_index() -> None:
    assert CacheAwareRouter().choose(_req(), [FakeView(100), FakeView(100)]) == 0


def test_make_router_rejects_unknown_names_and_params() -> None:
    with pytest.raises(ConfigError, match="unknown router 'nearest'; valid: round_robin, least_load"):
        make_router("nearest")
    with pytest.raises(ConfigError, match=r"router_params.alpha: not a parameter of cache_aware"):
        make_router("cache_aware", {"alpha": 1})
    with pytest.raises(ConfigError, match=r"load_weight: must be a finite number >= 0, got -1"):
        make_router("cache_aware", {"load_weight": -1})
    with pytest.raises(ConfigError, match=r"router_params.event_lag_s: must be a finite number >= 0"):
        make_router("cache_aware", {"event_lag_s": float("inf")})
    assert make_router("cache_aware", {"load_weight": 0.5}).load_weight == 0.5  # type: ignore[attr-defined]


def test_parse_cluster_section() -> None:
    section = parse_cluster_section({"instances": 3, "router": "least_load"})
    assert (section.instances, section.router, section.router_params) == (3, "least_load", {})
    assert parse_cluster_section(None).instances == 1
    with pytest.raises(ConfigError, match=r"cluster\.instances: must be an integer >= 1, got 0"):
        parse_cluster_section({"instances": 0})


def test_tree_prefix_hit_untiered_in_whole_pages() -> None:
    tree = RadixTree(policy="lru")
    tree.insert(list(range(10)), 0.0)
    keys = tuple([0, 1, 2, 3, 4, 5, 6, 99, 100])
    assert tree_prefix_hit(tree, keys, 1, tiered=False) == (7, 0)
    assert tree_prefix_hit(tree, keys, 4, tiered=False) == (4, 0)
    assert tree.num_nodes() == 1  # the probe never splits a node


def test_tree_prefix_hit_tiered_device_then_host() -> None:
    tree = RadixTree(tiers=("device", "host"), policy="lru")
    first = tree.insert(list(range(6)), 0.0, tier="device").last_node
    tree.add_tier(first, "host")
    second = tree.insert(list(range(12)), 0.0, tier="host").last_node
    assert second is not first
    # 6 tokens on device, the next 6 only on host; the 13th key misses.
    assert tree_prefix_hit(tree, tuple(range(13)), 1, tiered=True) == (6, 6)
    # Page-rounded: the host part starts where the device pages end.
    assert tree_prefix_hit(tree, tuple(range(13)), 4, tiered=True) == (4, 8)
    # Dropped from host too: nothing beyond the device part is usable.
    tree.remove_tier(second, "host")
    assert tree_prefix_hit(tree, tuple(range(13)), 1, tiered=True) == (6, 0)
