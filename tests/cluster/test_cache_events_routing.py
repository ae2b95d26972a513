"""The cache-aware router over the engines' KV cache events: after a run its index is exactly what the
engines' trees hold, a long event lag blinds it, and in a global-KVCM fleet it asks KVCM for the L3
prefix once per request."""

from __future__ import annotations

from typing import Any

from kvsim.cluster import run_cluster
from kvsim.cluster.fleet import Fleet, event_block, make_router
from kvsim.engines.experiment import build_engine
from kvsim.engines.sglang.hicache import HiCacheKVPool
from kvsim.engines.sglang.kvcm_store import KvcmStore
from tests.cluster.test_fleet import HICACHE, L3_KVCM, SMALL
from tests.cluster.test_fleet import _fleet_config as _config
from tests.cluster.test_kv_events import tree_pages


def tree_pages_of(pool: Any) -> dict[int, int]:
    """What an engine's tree holds, in the router's event blocks."""
    return tree_pages(pool.tree, event_block(pool.page_size), tiered=isinstance(pool, HiCacheKVPool))


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
            assert events.index._held[index] == tree_pages_of(driver.scheduler.pool)


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
