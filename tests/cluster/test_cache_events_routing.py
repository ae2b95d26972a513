"""The cache-aware router over the engines' KV cache events: after a run its index is exactly what the
engines' trees hold, a long event lag blinds it, and in a global-KVCM fleet it asks KVCM for the L3
prefix once per request."""

from __future__ import annotations

from typing import Any

from kvsim.cluster import run_cluster
from kvsim.cluster.fleet import Fleet, event_block, make_router
from kvsim.cluster.kv_events import DEVICE, HOST, page_hashes
from kvsim.engines.experiment import build_engine, resolve_config
from kvsim.engines.sglang.hicache import HiCacheKVPool
from kvsim.engines.sglang.kvcm_store import KvcmStore

SMALL = {
    "workload": {"gsp_num_groups": 4, "gsp_prompts_per_group": 6, "gsp_output_len": 64, "request_rate": 8}
}
HICACHE = {
    "server": {"enable_hierarchical_cache": True, "max_total_tokens": 6000, "hicache_ratio": 2.0},
    "workload": SMALL["workload"],
}
L3_KVCM = {
    "server": {
        "enable_hierarchical_cache": True,
        "max_total_tokens": 6000,
        "hicache_storage_backend": "kvcm",
    },
    "workload": {**SMALL["workload"], "max_concurrency": 5},
}


def _config(base: dict[str, Any], **cluster: Any) -> dict[str, Any]:
    config = resolve_config(None, base)
    config["cluster"] = cluster
    return config


def tree_pages(pool: Any) -> dict[int, int]:
    """Page hash -> tier bits of everything an engine's tree holds, computed from scratch."""
    tree, size = pool.tree, event_block(pool.page_size)
    tiered = isinstance(pool, HiCacheKVPool)
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
        for p, h in enumerate(page_hashes(path, size)):
            if start < (p + 1) * size <= len(path) and bits:
                out[h] = bits
    return out


def _fleet(base: dict[str, Any], instances: int, **params: Any) -> Fleet:
    config = _config(base, instances=instances, router="cache_aware", router_params=params)
    first = build_engine(config)
    builds = [first] + [build_engine(config, workload=first.workload) for _ in range(instances - 1)]
    return Fleet(builds, make_router("cache_aware", params), first.workload)


def test_event_blocks_are_whole_pages_of_at_least_16_tokens() -> None:
    assert [event_block(p) for p in (1, 4, 5, 16, 64)] == [16, 16, 20, 16, 64]


def test_index_equals_the_engines_trees_after_a_run() -> None:
    for base in (SMALL, HICACHE):
        fleet = _fleet(base, 3, event_lag_s=0.0)
        fleet.run()
        events = fleet.cache_events
        assert events is not None and events.index.applied > 0
        events.feed.deliver(float("inf"))
        for index, driver in enumerate(fleet.drivers):
            assert events.index._held[index] == tree_pages(driver.scheduler.pool)


def test_a_router_blind_to_events_finds_fewer_hits() -> None:
    hits = {}
    for lag in (0.0, 1e6):
        result = run_cluster(
            _config(SMALL, instances=4, router="cache_aware", router_params={"event_lag_s": lag})
        )
        hits[lag] = sum(r.cached_tokens for r in result.records)
    assert hits[0.0] > hits[1e6]


def test_global_kvcm_fleet_asks_kvcm_once_per_request() -> None:
    result = run_cluster(_config(L3_KVCM, instances=3, router="cache_aware", kvcm_scope="global"))
    store = result.builds[0].l3.store  # type: ignore[union-attr]
    shared = getattr(store, "store", store)
    assert isinstance(shared, KvcmStore)
    assert shared.router_queries == len(result.records) == 24
