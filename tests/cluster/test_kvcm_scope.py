"""Global vs local KVCM in a fleet (``cluster.kvcm_scope``): one shared manager and instance id, or one
per engine; the shared manager's clock under engines that act lazily; the Mooncake comparison."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from kvsim.cluster import run_cluster
from kvsim.cluster.fleet import parse_cluster_section
from kvsim.cluster.output import write_cluster_run
from kvsim.core.errors import ConfigError
from kvsim.engines.experiment import resolve_config
from kvsim.engines.sglang.kvcm_store import KvcmStore, SharedKvcmView, parse_kvcm_section
from kvsim.workloads.publisher_log import iter_publisher_events
from tests.conftest import REPO_ROOT, shared_path

L3_KVCM = {
    "server": {
        "enable_hierarchical_cache": True,
        "max_total_tokens": 6000,
        "hicache_storage_backend": "kvcm",
    },
    "workload": {
        "gsp_num_groups": 4,
        "gsp_prompts_per_group": 6,
        "gsp_output_len": 64,
        "request_rate": 8,
        "max_concurrency": 5,
    },
}


def _config(base: dict[str, Any], **cluster: Any) -> dict[str, Any]:
    config = resolve_config(None, base)
    config["cluster"] = cluster
    return config


def _store() -> KvcmStore:
    return KvcmStore(parse_kvcm_section(None), 4, 100, 1, ("Qwen3-8B", "bf16"), np.random.default_rng(0))


def test_scope_defaults_to_local_and_is_checked() -> None:
    assert parse_cluster_section({"instances": 2}).kvcm_scope == "local"
    assert parse_cluster_section({"instances": 2, "kvcm_scope": "global"}).kvcm_scope == "global"
    with pytest.raises(
        ConfigError, match=re.escape("cluster.kvcm_scope: 'shared' is not one of local, global")
    ):
        parse_cluster_section({"kvcm_scope": "shared"})


def test_global_scope_needs_kvcm_on_every_instance() -> None:
    config = _config({"workload": L3_KVCM["workload"]}, instances=2, kvcm_scope="global")
    with pytest.raises(
        ConfigError, match=re.escape("global needs every instance on --hicache-storage-backend kvcm")
    ):
        run_cluster(config)


def test_views_share_one_manager_and_count_their_own_calls() -> None:
    store = _store()
    a, b = SharedKvcmView(store, owner=True), SharedKvcmView(store, owner=False)
    keys = np.array([11, 12, 13], dtype=np.int64)
    ticket = a.start_write(keys, 1.0)
    assert ticket.new_pages == 3
    assert a.finish_write(ticket, 2.0) == 3
    # B's call carries an earlier time than A already made the manager see: applied at 2.0, counted.
    runs = b.query(keys, 0, 1.5)
    assert [pages for _, pages in runs] == [3]
    assert store.clock.now() == 2.0
    assert (a.late_calls, b.late_calls) == (0, 1)
    assert (a.queries, b.queries, b.hit_pages, store.queries) == (0, 1, 3, 1)
    # The same pages again from B: KVCM answers that it holds them all, nothing moves.
    again = b.start_write(keys, 3.0)
    assert (again.new_pages, again.refused_pages) == (0, 0)
    # Manager-wide counters only from the owner, so instances sum to the fleet's totals.
    assert a.metrics()["kvcm_events"] == store.events.published
    assert b.metrics()["kvcm_events"] == 0


def test_global_fleet_writes_each_page_once() -> None:
    local = run_cluster(_config(L3_KVCM, instances=3, kvcm_scope="local"))
    shared = run_cluster(_config(L3_KVCM, instances=3, kvcm_scope="global"))
    views = [build.l3.store for build in shared.builds if build.l3 is not None]
    assert all(isinstance(view, SharedKvcmView) for view in views)
    assert len({id(view.store) for view in views if isinstance(view, SharedKvcmView)}) == 1
    assert shared.config["cluster"]["kvcm_scope"] == "global"
    lm, gm = local.metrics, shared.metrics
    # Same pages offered for backup either way (these prompts find nothing in L3, so the runs' timing is
    # the same); the global manager already holds what another engine wrote, so fewer pages move.
    offered = lm["l3_written_blocks"] + lm["l3_already_cached_blocks"]
    assert gm["l3_written_blocks"] + gm["l3_already_cached_blocks"] == offered
    assert lm["l3_already_cached_blocks"] == 0
    assert gm["l3_already_cached_blocks"] > 0
    assert gm["mean_ttft_ms"] == lm["mean_ttft_ms"]
    # Instance metrics sum to the fleet's; the event count is the one shared manager's.
    assert sum(m["l3_written_blocks"] for m in gm["instances"]) == gm["l3_written_blocks"]
    shared_store = views[0].store  # type: ignore[union-attr]
    assert gm["kvcm_events"] == shared_store.events.published


def test_global_cache_beats_local_on_mooncake() -> None:
    trace = shared_path("data", "traces", "mooncake", "conversation_trace.jsonl")
    results = {}
    for scope in ("local", "global"):
        config = resolve_config(
            REPO_ROOT / "experiments" / "cluster_global_vs_local.yaml",
            {"workload": {"num_prompts": 300, "dataset_path": str(trace)}},
        )
        config["cluster"] = {**config["cluster"], "instances": 4, "kvcm_scope": scope}
        results[scope] = run_cluster(config).metrics
    local, shared = results["local"], results["global"]
    assert shared["prefix_cache_reused_ratio"] > local["prefix_cache_reused_ratio"]
    assert shared["l3_hit_ratio"] > local["l3_hit_ratio"]
    assert shared["mean_ttft_ms"] < local["mean_ttft_ms"]


@pytest.mark.parametrize("scope", ["local", "global"])
def test_run_directory_holds_one_event_log_per_manager(tmp_path: Path, scope: str) -> None:
    result, run_dir = write_cluster_run(
        _config(L3_KVCM, instances=2, kvcm_scope=scope), tmp_path / scope, plots=False
    )
    per_instance = [m["kvcm_events"] for m in result.metrics["instances"]]
    if scope == "global":
        names = ["kvcm_events.jsonl"]
        counts = [per_instance[0]]  # the one manager's, reported by instance 0
    else:
        names = ["kvcm_events.instance0.jsonl", "kvcm_events.instance1.jsonl"]
        counts = per_instance
    assert sorted(p.name for p in run_dir.glob("kvcm_events*.jsonl")) == names
    for name, count in zip(names, counts, strict=True):
        records = list(iter_publisher_events(run_dir / name))
        assert len(records) == count > 0
